-- A state database as mtad's release before numbered migrations (commit bebe064, schema version 1) leaves it:
-- made by tests/e2e/data/make_state_bebe064.py with that release's own code, dumped with sqlite3 iterdump().
-- Every state of mail and work (see that script); http://@RECEIVER@ stands for the test's HTTP receiver.
-- user_version: 1 (a dump does not carry it: restore, then PRAGMA user_version=1). Made 2026-12-07.
BEGIN TRANSACTION;
CREATE TABLE credentials (
    login TEXT PRIMARY KEY,
    domain TEXT NOT NULL,  -- an API domain or a config one (credentials may be added to both)
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
INSERT INTO "credentials" VALUES('alice@fresh.example','fresh.example','$scrypt$n=16384,r=8,p=1$56cCz3jorbwXmYrlAt2WnA$3Totp9BPnll+U2c3SLw/W9vnfuWhCL2bnmsb7///UsM',1.79662280148615479463e+09);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    message TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    recipients TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    provider TEXT,
    last_code INTEGER,
    last_reply TEXT,
    sender TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO "deliveries" VALUES(1,'1A24F10638A0007437F','dest.test','[]','done',1,1.7966228038504228592e+09,NULL,NULL,NULL,250,'2.0.0 Ok: kept',NULL,1.7966228038504228592e+09,1.79662280396857190127e+09);
INSERT INTO "deliveries" VALUES(2,'1A24F1063A0EE166B83','dest.test','[]','done',1,1.79662280387209844587e+09,NULL,NULL,NULL,250,'2.0.0 Ok: kept',NULL,1.79662280387209844587e+09,1.79662280396967339517e+09);
INSERT INTO "deliveries" VALUES(3,'1A24F10646CA8CF0188','dest.test','[]','done',1,1.79662280407678985596e+09,NULL,NULL,NULL,550,'5.1.1 <bad@dest.test>: Recipient address rejected: User unknown',NULL,1.79662280407678985596e+09,1.79662280412661743162e+09);
INSERT INTO "deliveries" VALUES(4,'1A24F1065483EA262C6','dest.test','["soft@dest.test"]','deferred',1,1.79662640433062124247e+09,NULL,NULL,NULL,451,'4.2.1 Mailbox busy, try again later',NULL,1.79662280429617381097e+09,1.79662280433062124251e+09);
INSERT INTO "deliveries" VALUES(5,'1A24F1065FF6907CF4C','yahoo.test','["q1@yahoo.test"]','queued',0,1.79662280447998762124e+09,'old-mtad:4242',1.79662280813157296177e+09,NULL,NULL,NULL,NULL,1.79662280447998762124e+09,1.79662280447998762124e+09);
INSERT INTO "deliveries" VALUES(6,'1A24F1066DEA67B1880','yahoo.test','["q2@yahoo.test"]','queued',0,1.79662280470227241511e+09,NULL,NULL,NULL,NULL,NULL,NULL,1.79662280470227241511e+09,1.79662280470227241511e+09);
CREATE TABLE domains (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    receiving INTEGER NOT NULL DEFAULT 1,
    spam_action TEXT NOT NULL DEFAULT 'disabled',
    wildcard INTEGER NOT NULL DEFAULT 0,
    dkim_selector TEXT NOT NULL,
    dkim_key TEXT NOT NULL
);
INSERT INTO "domains" VALUES('fresh.example',1.79662280129729604724e+09,1,'disabled',0,'k1','-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDzV3wc3id/9BD6
6KUc8Jz6HfyMA90KLYrxEicqZBAvQe91JQjIlo1OoGRIkDvEvhn2aukCR5fLXTyb
MdV2AknnO2J8/ngpDAojOJ7Y+vx1nmx+17bZRXUKPvrzV+2+i5shj3M+9+wd7Bhw
hs7Fx3iLweOS5zHZZPnEykhul4G6Yq+7C35uCQxAbXZ+XVLXU1fTzTCFvrjQtqfk
UTNKW0WElxleZRQCBZMm1skxyAszq+WV84vV9aQLGp4fcRBMisHgGwb2sRYRjwOK
rQrbSc6E1i0cKdR6x0GWGu5zJUto/0ChsuTnJofMrBMu6VQXvZ/aijTUaT3LwAIp
dwYlgw/lAgMBAAECggEAakfB8dvHVbez+NpGTxr5/LW/GSoQzwKwJfUfPQECHpnG
K5xWt0EmC3q7AgRYzmeW8EymYzQApLYeo8vCpu19+KuzqtL7iTX0cYinvC32uKpO
SaIOftu6sBRsx36WXDweL6y3EX/31OPKks8WHUSvLh8rNXybhY74Fc6hjwfGBbB9
dDZsLG8UhScIXwSFclx6CTewqwbPG6OLC/GXuZrCTfzQD58MDIlsilIZ7c5mC8hU
9E0rVfkE4yYrQ9evr6zlL+fogj1Wgzf4eBOKKEwhKcYx+LAfHsslhgPFG2IjJfWc
YYa8cO41adbSdONxJIOXP7uBdMBG4Z0g0EqDpHoqOwKBgQD8/Vq04f8utHQXRGWe
iJjVGgCmUhEVO5go7mdzQJamrpeWzlj3t/qjTpmb+9uGbJMZrcrx29d+N7tSmn/W
Apdtycby0jPdALY0t5SZy+DCYSxKC8e/H+dT73W0xLB1dGeytAE7oXYnJXatzPdV
mHxYhlrSuTpcWotbo2n8pEgtDwKBgQD2PL3NKDczkdYTUPsO+/pHt81xtkrSxRnJ
EXaBLPPkqD22h9hPwUfGldAWiy1CSwkRIB0e+j6IvdJn2S72GU84xBhAJOt5X/6M
c/YVE2D3lmmdhxwkE7rLtCXUhbqkHIA+fB8R3ge3+XvqGcr7Pxc+z8IG5D1pt+WG
tiyOKY1bywKBgFoz306VMc4uSyIsoernm06ICelDY5HlgLg/YKVIRy7BG42Kn1Ab
ygLGOKDUKQ6B0eUbATxA/VGkf2bRbXkZzXI4unXDmvhWk6CyQAqiFc5YpVj1YE/2
CR31SEuewafvTDX8VmAzjpQgmHMZnKppRxStOt7dakCZjAytdFG/JXjjAoGAfhii
9eGnSyBeqWup9YVyKLHmYloAvSi0SLRJpGL5ztmdKNEuI8GN2RM1CaZiGfXFAeEZ
KJjr1yimDAo7M0nIuQAqjwaZE4HmH9TuauKOoJuFIGdlMNBtsw1g5hFJf+scfWMg
ogy6lSsMmth0iu9HHyJTcSYGkRHcV30JGhALVLsCgYB6afNSxnjOuvEUe5v0RQ1h
r8SVQpCL65fSYiHwmlqlikPzW39ipvQ8NCnG9gGx7tFgczofYO/Pl4u5YRHpKY48
QL34J8F/oyndqOAIZ/i57M2blRpNwDVI3W6SJmVAWLEXCPvgtFFCowox9yQ5Ybbr
OKEAMt3NPzcudrhoTk748Q==
-----END PRIVATE KEY-----
');
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    timestamp REAL NOT NULL,
    domain TEXT NOT NULL,
    event TEXT NOT NULL,
    recipient TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    queue_id TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL
);
INSERT INTO "events" VALUES(1,'AaJPEGOLbZyH-ItJIm0NBg',1.7966228038504228592e+09,'example.com','accepted','ok1@dest.test','1A24F10638A0007437F@mtad.test','1A24F10638A0007437F','','{"id":"AaJPEGOLbZyH-ItJIm0NBg","event":"accepted","timestamp":1796622803.8504229,"log-level":"info","recipient":"ok1@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F10638A0007437F@mtad.test","from":"Sender <postmaster@example.com>","to":"ok1@dest.test, ok2@dest.test","subject":"Delivered before the upgrade"},"attachments":[],"size":363},"tags":["legacy"],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"ok1@dest.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F10638A0007437F"},"method":"smtp","originating-ip":"127.0.0.1","direction":"outgoing"}');
INSERT INTO "events" VALUES(2,'AaJPEGOLlqoPuAx0t12MpQ',1.7966228038504228592e+09,'example.com','accepted','ok2@dest.test','1A24F10638A0007437F@mtad.test','1A24F10638A0007437F','','{"id":"AaJPEGOLlqoPuAx0t12MpQ","event":"accepted","timestamp":1796622803.8504229,"log-level":"info","recipient":"ok2@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F10638A0007437F@mtad.test","from":"Sender <postmaster@example.com>","to":"ok1@dest.test, ok2@dest.test","subject":"Delivered before the upgrade"},"attachments":[],"size":363},"tags":["legacy"],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"ok2@dest.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F10638A0007437F"},"method":"smtp","originating-ip":"127.0.0.1","direction":"outgoing"}');
INSERT INTO "events" VALUES(3,'AaJPEGOhJWz3WzY5M_HYUQ',1.79662280387209844587e+09,'example.com','accepted','old@dest.test','20261207055323.69120c6e78a91ef0@example.com','1A24F1063A0EE166B83','','{"id":"AaJPEGOhJWz3WzY5M_HYUQ","event":"accepted","timestamp":1796622803.8720984,"log-level":"info","recipient":"old@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"20261207055323.69120c6e78a91ef0@example.com","from":"Sender <postmaster@example.com>","to":"old@dest.test","subject":"Before the upgrade"},"attachments":[],"size":452},"tags":["legacy"],"campaigns":[],"user-variables":{"order":"old-42","blob":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"envelope":{"sender":"postmaster@example.com","targets":"old@dest.test","transport":"http","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F1063A0EE166B83"},"method":"http","originating-ip":"127.0.0.1","direction":"outgoing"}');
INSERT INTO "events" VALUES(4,'AaJPEGQLlb5fK0LkFzfUbQ',1.79662280396857190127e+09,'example.com','delivered','ok1@dest.test','1A24F10638A0007437F@mtad.test','1A24F10638A0007437F','','{"id":"AaJPEGQLlb5fK0LkFzfUbQ","event":"delivered","timestamp":1796622803.968572,"log-level":"info","recipient":"ok1@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F10638A0007437F@mtad.test","from":"Sender <postmaster@example.com>","to":"ok1@dest.test, ok2@dest.test","subject":"Delivered before the upgrade"},"attachments":[],"size":363},"tags":["legacy"],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"ok1@dest.test","transport":"smtp","sending-ip":""},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false},"storage":{"key":"1A24F10638A0007437F"},"delivery-status":{"code":250,"enhanced-code":"2.0.0","message":"2.0.0 Ok: kept","description":"","attempt-no":1,"mx-host":"mx.sink.test","tls":false,"certificate-verified":false,"session-seconds":0.044}}');
INSERT INTO "events" VALUES(5,'AaJPEGQLtmnjg2lAaU8BXg',1.79662280396857190127e+09,'example.com','delivered','ok2@dest.test','1A24F10638A0007437F@mtad.test','1A24F10638A0007437F','','{"id":"AaJPEGQLtmnjg2lAaU8BXg","event":"delivered","timestamp":1796622803.968572,"log-level":"info","recipient":"ok2@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F10638A0007437F@mtad.test","from":"Sender <postmaster@example.com>","to":"ok1@dest.test, ok2@dest.test","subject":"Delivered before the upgrade"},"attachments":[],"size":363},"tags":["legacy"],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"ok2@dest.test","transport":"smtp","sending-ip":""},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false},"storage":{"key":"1A24F10638A0007437F"},"delivery-status":{"code":250,"enhanced-code":"2.0.0","message":"2.0.0 Ok: kept","description":"","attempt-no":1,"mx-host":"mx.sink.test","tls":false,"certificate-verified":false,"session-seconds":0.044}}');
INSERT INTO "events" VALUES(6,'AaJPEGQPnIOeEy6kFwGl_w',1.79662280396967339517e+09,'example.com','delivered','old@dest.test','20261207055323.69120c6e78a91ef0@example.com','1A24F1063A0EE166B83','','{"id":"AaJPEGQPnIOeEy6kFwGl_w","event":"delivered","timestamp":1796622803.9696734,"log-level":"info","recipient":"old@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"20261207055323.69120c6e78a91ef0@example.com","from":"Sender <postmaster@example.com>","to":"old@dest.test","subject":"Before the upgrade"},"attachments":[],"size":452},"tags":["legacy"],"campaigns":[],"user-variables":{"order":"old-42","blob":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"envelope":{"sender":"postmaster@example.com","targets":"old@dest.test","transport":"smtp","sending-ip":""},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false},"storage":{"key":"1A24F1063A0EE166B83"},"delivery-status":{"code":250,"enhanced-code":"2.0.0","message":"2.0.0 Ok: kept","description":"","attempt-no":1,"mx-host":"mx.sink.test","tls":false,"certificate-verified":false,"session-seconds":0.017}}');
INSERT INTO "events" VALUES(7,'AaJPEGRwUFSjVJmPaS307w',1.79662280407678985596e+09,'example.com','accepted','bad@dest.test','1A24F10646CA8CF0188@mtad.test','1A24F10646CA8CF0188','','{"id":"AaJPEGRwUFSjVJmPaS307w","event":"accepted","timestamp":1796622804.0767899,"log-level":"info","recipient":"bad@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F10646CA8CF0188@mtad.test","from":"Sender <postmaster@example.com>","to":"bad@dest.test","subject":"Bounced before the upgrade"},"attachments":[],"size":368},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"bad@dest.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F10646CA8CF0188"},"method":"smtp","originating-ip":"127.0.0.1","direction":"outgoing"}');
INSERT INTO "events" VALUES(8,'AaJPEGSeVFbAyvtXqApXoA',1.79662280412661743162e+09,'example.com','failed','bad@dest.test','1A24F10646CA8CF0188@mtad.test','1A24F10646CA8CF0188','permanent','{"id":"AaJPEGSeVFbAyvtXqApXoA","event":"failed","timestamp":1796622804.1266174,"log-level":"error","recipient":"bad@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F10646CA8CF0188@mtad.test","from":"Sender <postmaster@example.com>","to":"bad@dest.test","subject":"Bounced before the upgrade"},"attachments":[],"size":368},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"bad@dest.test","transport":"smtp","sending-ip":""},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false},"storage":{"key":"1A24F10646CA8CF0188"},"severity":"permanent","reason":"bounce","delivery-status":{"code":550,"enhanced-code":"5.1.1","message":"5.1.1 <bad@dest.test>: Recipient address rejected: User unknown","description":"5.1.1 <bad@dest.test>: Recipient address rejected: User unknown","attempt-no":1,"mx-host":"mx.sink.test","tls":false,"certificate-verified":false,"session-seconds":0.019}}');
INSERT INTO "events" VALUES(9,'AaJPEGVIAdx6R-ElJGGfGw',1.79662280429617381097e+09,'example.com','accepted','soft@dest.test','1A24F1065483EA262C6@mtad.test','1A24F1065483EA262C6','','{"id":"AaJPEGVIAdx6R-ElJGGfGw","event":"accepted","timestamp":1796622804.2961738,"log-level":"info","recipient":"soft@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F1065483EA262C6@mtad.test","from":"Sender <postmaster@example.com>","to":"soft@dest.test","subject":"Deferred before the upgrade"},"attachments":[],"size":371},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"soft@dest.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F1065483EA262C6"},"method":"smtp","originating-ip":"127.0.0.1","direction":"outgoing"}');
INSERT INTO "events" VALUES(10,'AaJPEGVsbRJqHnx_BSXf-A',1.79662280433062124251e+09,'example.com','failed','soft@dest.test','1A24F1065483EA262C6@mtad.test','1A24F1065483EA262C6','temporary','{"id":"AaJPEGVsbRJqHnx_BSXf-A","event":"failed","timestamp":1796622804.3306212,"log-level":"warn","recipient":"soft@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"1A24F1065483EA262C6@mtad.test","from":"Sender <postmaster@example.com>","to":"soft@dest.test","subject":"Deferred before the upgrade"},"attachments":[],"size":371},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"soft@dest.test","transport":"smtp","sending-ip":""},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false},"storage":{"key":"1A24F1065483EA262C6"},"severity":"temporary","reason":"generic","delivery-status":{"code":451,"enhanced-code":"4.2.1","message":"4.2.1 Mailbox busy, try again later","description":"4.2.1 Mailbox busy, try again later","attempt-no":1,"mx-host":"mx.sink.test","tls":false,"certificate-verified":false,"session-seconds":0.01,"retry-seconds":3600}}');
INSERT INTO "events" VALUES(11,'AaJPEGYA8MFdCK6bFT4WWQ',1.79662280447998762124e+09,'example.com','accepted','q1@yahoo.test','1A24F1065FF6907CF4C@mtad.test','1A24F1065FF6907CF4C','','{"id":"AaJPEGYA8MFdCK6bFT4WWQ","event":"accepted","timestamp":1796622804.4799876,"log-level":"info","recipient":"q1@yahoo.test","recipient-domain":"yahoo.test","message":{"headers":{"message-id":"1A24F1065FF6907CF4C@mtad.test","from":"Sender <postmaster@example.com>","to":"q1@yahoo.test","subject":"Queued before the upgrade (claimed)"},"attachments":[],"size":377},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"q1@yahoo.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F1065FF6907CF4C"},"method":"smtp","originating-ip":"127.0.0.1","direction":"outgoing"}');
INSERT INTO "events" VALUES(12,'AaJPEGbekNECdq3lamkCEA',1.79662280470227241511e+09,'example.com','accepted','q2@yahoo.test','1A24F1066DEA67B1880@mtad.test','1A24F1066DEA67B1880','','{"id":"AaJPEGbekNECdq3lamkCEA","event":"accepted","timestamp":1796622804.7022724,"log-level":"info","recipient":"q2@yahoo.test","recipient-domain":"yahoo.test","message":{"headers":{"message-id":"1A24F1066DEA67B1880@mtad.test","from":"Sender <postmaster@example.com>","to":"q2@yahoo.test","subject":"Queued before the upgrade"},"attachments":[],"size":367},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"postmaster@example.com","targets":"q2@yahoo.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F1066DEA67B1880"},"method":"smtp","originating-ip":"127.0.0.1","direction":"outgoing"}');
INSERT INTO "events" VALUES(13,'AaJPEGble_uoi-Z5LuW99g',1796622804.70861,'inbound.test','accepted','in@inbound.test','','1A24F1066E4590B01D8','','{"id":"AaJPEGble_uoi-Z5LuW99g","event":"accepted","timestamp":1796622804.70861,"log-level":"info","recipient":"in@inbound.test","recipient-domain":"inbound.test","message":{"headers":{"message-id":"","from":"Outside <someone@outside.test>","to":"in@inbound.test","subject":"Forwarded before the upgrade"},"attachments":[],"size":263},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"someone@outside.test","targets":"in@inbound.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":false,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"1A24F1066E4590B01D8"},"method":"smtp","originating-ip":"127.0.0.1","direction":"incoming"}');
INSERT INTO "events" VALUES(14,'AaJPEGkeWQd5Hm3LU-8nBw',1.7966228052780411243e+09,'inbound.test','failed','in@inbound.test','','1A24F1066E4590B01D8','temporary','{"id":"AaJPEGkeWQd5Hm3LU-8nBw","event":"failed","timestamp":1796622805.2780411,"log-level":"warn","recipient":"in@inbound.test","recipient-domain":"inbound.test","message":{"headers":{"message-id":"","from":"Outside <someone@outside.test>","to":"in@inbound.test","subject":"Forwarded before the upgrade"},"attachments":[],"size":263},"tags":[],"campaigns":[],"user-variables":{},"envelope":{"sender":"someone@outside.test","targets":"http://@RECEIVER@/route","transport":"http"},"flags":{"is-routed":true,"is-authenticated":false,"is-test-mode":false},"storage":{"key":"1A24F1066E4590B01D8"},"delivery-status":{"code":500,"message":"no","attempt-no":1,"session-seconds":0.005,"url":"http://@RECEIVER@/route","retry-seconds":3600},"method":"http","route":{"id":"40bd082b472f51fb29462f59"},"severity":"temporary","reason":"generic"}');
CREATE TABLE forwards (
    id INTEGER PRIMARY KEY,
    message TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient TEXT NOT NULL,
    route_id TEXT,
    action TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO "forwards" VALUES(1,'1A24F1066E4590B01D8','in@inbound.test','40bd082b472f51fb29462f59','http','http://@RECEIVER@/route','deferred',1,1.7966264052780411243e+09,NULL,NULL,500,'no',1796622804.70861,1.7966228052780411243e+09);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO "kv" VALUES('pause:domain:yahoo.test','{"since": 1796622802.7572126}');
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    direction TEXT NOT NULL,
    domain TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    message_id TEXT NOT NULL DEFAULT '',
    headers TEXT NOT NULL,
    options TEXT NOT NULL,
    envelope TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    stored_until REAL
);
INSERT INTO "messages" VALUES('1A24F10638A0007437F',1.7966228038504228592e+09,'outbound','example.com','postmaster@example.com','["ok1@dest.test", "ok2@dest.test"]','1A24F10638A0007437F@mtad.test','{"message-id": "1A24F10638A0007437F@mtad.test", "from": "Sender <postmaster@example.com>", "to": "ok1@dest.test, ok2@dest.test", "subject": "Delivered before the upgrade"}','{"tags": ["legacy"], "campaigns": [], "dkim": null, "deliver_by": null, "deliver_within": null, "test_mode": false, "tracking": null, "tracking_clicks": null, "tracking_opens": null, "variables": {}, "require_tls": false, "skip_verification": false, "unknown": []}','{"client_ip": "127.0.0.1", "client_helo": "client.test", "auth_user": "postmaster@example.com", "tls": true, "transport": "smtp", "listener": "submission"}',363,X'52656365697665643A2066726F6D20636C69656E742E7465737420285B3132372E302E302E315D290D0A096279206D7461642E7465737420286D7461642920776974682045534D5450534120696420314132344631303633384130303037343337463B0D0A094D6F6E2C2030372044656320323032362030353A35333A3233202D303030300D0A4D6573736167652D49443A203C31413234463130363338413030303734333746406D7461642E746573743E0D0A446174653A204D6F6E2C2030372044656320323032362030353A35333A3233202D303030300D0A46726F6D3A2053656E646572203C706F73746D6173746572406578616D706C652E636F6D3E0D0A546F3A206F6B3140646573742E746573742C206F6B3240646573742E746573740D0A5375626A6563743A2044656C697665726564206265666F72652074686520757067726164650D0A0D0A48656C6C6F2066726F6D20746865206576656E74732074657374732E0D0A',NULL);
INSERT INTO "messages" VALUES('1A24F1063A0EE166B83',1.79662280387209844587e+09,'outbound','example.com','postmaster@example.com','["old@dest.test"]','20261207055323.69120c6e78a91ef0@example.com','{"message-id": "20261207055323.69120c6e78a91ef0@example.com", "from": "Sender <postmaster@example.com>", "to": "old@dest.test", "subject": "Before the upgrade"}','{"tags": ["legacy"], "campaigns": [], "dkim": null, "deliver_by": null, "deliver_within": null, "test_mode": false, "tracking": null, "tracking_clicks": null, "tracking_opens": null, "variables": {"order": "old-42", "blob": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}, "require_tls": false, "skip_verification": false, "unknown": []}','{"client_ip": "127.0.0.1", "client_helo": "", "auth_user": "api", "tls": false, "transport": "http", "listener": "api"}',452,X'52656365697665643A2066726F6D2061706920285B3132372E302E302E315D290D0A096279206D7461642E7465737420286D746164292077697468204854545020696420314132344631303633413045453136364238330D0A09666F72203C6F6C6440646573742E746573743E3B0D0A094D6F6E2C2030372044656320323032362030353A35333A3233202D303030300D0A46726F6D3A2053656E646572203C706F73746D6173746572406578616D706C652E636F6D3E0D0A546F3A206F6C6440646573742E746573740D0A5375626A6563743A204265666F72652074686520757067726164650D0A4D6573736167652D49443A203C32303236313230373035353332332E36393132306336653738613931656630406578616D706C652E636F6D3E0D0A446174653A204D6F6E2C2030372044656320323032362030353A35333A323320474D540D0A4D494D452D56657273696F6E3A20312E300D0A436F6E74656E742D547970653A20746578742F706C61696E3B20636861727365743D227574662D38220D0A436F6E74656E742D5472616E736665722D456E636F64696E673A20376269740D0A0D0A53656E74206265666F72652074686520757067726164652E0D0A',NULL);
INSERT INTO "messages" VALUES('1A24F10646CA8CF0188',1.79662280407678985596e+09,'outbound','example.com','postmaster@example.com','["bad@dest.test"]','1A24F10646CA8CF0188@mtad.test','{"message-id": "1A24F10646CA8CF0188@mtad.test", "from": "Sender <postmaster@example.com>", "to": "bad@dest.test", "subject": "Bounced before the upgrade"}','{"tags": [], "campaigns": [], "dkim": null, "deliver_by": null, "deliver_within": null, "test_mode": false, "tracking": null, "tracking_clicks": null, "tracking_opens": null, "variables": {}, "require_tls": false, "skip_verification": false, "unknown": []}','{"client_ip": "127.0.0.1", "client_helo": "client.test", "auth_user": "postmaster@example.com", "tls": true, "transport": "smtp", "listener": "submission"}',368,X'52656365697665643A2066726F6D20636C69656E742E7465737420285B3132372E302E302E315D290D0A096279206D7461642E7465737420286D7461642920776974682045534D5450534120696420314132344631303634364341384346303138380D0A09666F72203C62616440646573742E746573743E3B0D0A094D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A4D6573736167652D49443A203C31413234463130363436434138434630313838406D7461642E746573743E0D0A446174653A204D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A46726F6D3A2053656E646572203C706F73746D6173746572406578616D706C652E636F6D3E0D0A546F3A2062616440646573742E746573740D0A5375626A6563743A20426F756E636564206265666F72652074686520757067726164650D0A0D0A48656C6C6F2066726F6D20746865206576656E74732074657374732E0D0A',NULL);
INSERT INTO "messages" VALUES('1A24F1065483EA262C6',1.79662280429617381097e+09,'outbound','example.com','postmaster@example.com','["soft@dest.test"]','1A24F1065483EA262C6@mtad.test','{"message-id": "1A24F1065483EA262C6@mtad.test", "from": "Sender <postmaster@example.com>", "to": "soft@dest.test", "subject": "Deferred before the upgrade"}','{"tags": [], "campaigns": [], "dkim": null, "deliver_by": null, "deliver_within": null, "test_mode": false, "tracking": null, "tracking_clicks": null, "tracking_opens": null, "variables": {}, "require_tls": false, "skip_verification": false, "unknown": []}','{"client_ip": "127.0.0.1", "client_helo": "client.test", "auth_user": "postmaster@example.com", "tls": true, "transport": "smtp", "listener": "submission"}',371,X'52656365697665643A2066726F6D20636C69656E742E7465737420285B3132372E302E302E315D290D0A096279206D7461642E7465737420286D7461642920776974682045534D5450534120696420314132344631303635343833454132363243360D0A09666F72203C736F667440646573742E746573743E3B0D0A094D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A4D6573736167652D49443A203C31413234463130363534383345413236324336406D7461642E746573743E0D0A446174653A204D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A46726F6D3A2053656E646572203C706F73746D6173746572406578616D706C652E636F6D3E0D0A546F3A20736F667440646573742E746573740D0A5375626A6563743A204465666572726564206265666F72652074686520757067726164650D0A0D0A48656C6C6F2066726F6D20746865206576656E74732074657374732E0D0A',NULL);
INSERT INTO "messages" VALUES('1A24F1065FF6907CF4C',1.79662280447998762124e+09,'outbound','example.com','postmaster@example.com','["q1@yahoo.test"]','1A24F1065FF6907CF4C@mtad.test','{"message-id": "1A24F1065FF6907CF4C@mtad.test", "from": "Sender <postmaster@example.com>", "to": "q1@yahoo.test", "subject": "Queued before the upgrade (claimed)"}','{"tags": [], "campaigns": [], "dkim": null, "deliver_by": null, "deliver_within": null, "test_mode": false, "tracking": null, "tracking_clicks": null, "tracking_opens": null, "variables": {}, "require_tls": false, "skip_verification": false, "unknown": []}','{"client_ip": "127.0.0.1", "client_helo": "client.test", "auth_user": "postmaster@example.com", "tls": true, "transport": "smtp", "listener": "submission"}',377,X'52656365697665643A2066726F6D20636C69656E742E7465737420285B3132372E302E302E315D290D0A096279206D7461642E7465737420286D7461642920776974682045534D5450534120696420314132344631303635464636393037434634430D0A09666F72203C7131407961686F6F2E746573743E3B0D0A094D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A4D6573736167652D49443A203C31413234463130363546463639303743463443406D7461642E746573743E0D0A446174653A204D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A46726F6D3A2053656E646572203C706F73746D6173746572406578616D706C652E636F6D3E0D0A546F3A207131407961686F6F2E746573740D0A5375626A6563743A20517565756564206265666F72652074686520757067726164652028636C61696D6564290D0A0D0A48656C6C6F2066726F6D20746865206576656E74732074657374732E0D0A',NULL);
INSERT INTO "messages" VALUES('1A24F1066DEA67B1880',1.79662280470227241511e+09,'outbound','example.com','postmaster@example.com','["q2@yahoo.test"]','1A24F1066DEA67B1880@mtad.test','{"message-id": "1A24F1066DEA67B1880@mtad.test", "from": "Sender <postmaster@example.com>", "to": "q2@yahoo.test", "subject": "Queued before the upgrade"}','{"tags": [], "campaigns": [], "dkim": null, "deliver_by": null, "deliver_within": null, "test_mode": false, "tracking": null, "tracking_clicks": null, "tracking_opens": null, "variables": {}, "require_tls": false, "skip_verification": false, "unknown": []}','{"client_ip": "127.0.0.1", "client_helo": "client.test", "auth_user": "postmaster@example.com", "tls": true, "transport": "smtp", "listener": "submission"}',367,X'52656365697665643A2066726F6D20636C69656E742E7465737420285B3132372E302E302E315D290D0A096279206D7461642E7465737420286D7461642920776974682045534D5450534120696420314132344631303636444541363742313838300D0A09666F72203C7132407961686F6F2E746573743E3B0D0A094D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A4D6573736167652D49443A203C31413234463130363644454136374231383830406D7461642E746573743E0D0A446174653A204D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A46726F6D3A2053656E646572203C706F73746D6173746572406578616D706C652E636F6D3E0D0A546F3A207132407961686F6F2E746573740D0A5375626A6563743A20517565756564206265666F72652074686520757067726164650D0A0D0A48656C6C6F2066726F6D20746865206576656E74732074657374732E0D0A',NULL);
INSERT INTO "messages" VALUES('1A24F1066E4590B01D8',1796622804.70861,'inbound','inbound.test','someone@outside.test','["in@inbound.test"]','','{"message-id": "", "from": "Outside <someone@outside.test>", "to": "in@inbound.test", "subject": "Forwarded before the upgrade"}','{"tags": [], "campaigns": [], "dkim": null, "deliver_by": null, "deliver_within": null, "test_mode": false, "tracking": null, "tracking_clicks": null, "tracking_opens": null, "variables": {}, "require_tls": false, "skip_verification": false, "unknown": []}','{"client_ip": "127.0.0.1", "client_helo": "outside.test", "auth_user": null, "tls": false, "transport": "smtp", "listener": "mx"}',263,X'52656365697665643A2066726F6D206F7574736964652E7465737420285B3132372E302E302E315D290D0A096279206D7461642E7465737420286D7461642920776974682045534D545020696420314132344631303636453435393042303144380D0A09666F72203C696E40696E626F756E642E746573743E3B0D0A094D6F6E2C2030372044656320323032362030353A35333A3234202D303030300D0A46726F6D3A204F757473696465203C736F6D656F6E65406F7574736964652E746573743E0D0A546F3A20696E40696E626F756E642E746573740D0A5375626A6563743A20466F72776172646564206265666F72652074686520757067726164650D0A0D0A48692E0D0A',NULL);
CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    priority INTEGER NOT NULL,
    description TEXT NOT NULL,
    expression TEXT NOT NULL,
    actions TEXT NOT NULL,
    created_at REAL NOT NULL
);
INSERT INTO "routes" VALUES('6b1649d1c678ae5a2a15b713',2,'API route made by bebe064','match_recipient("api@inbound.test")','["forward(\"http://@RECEIVER@/api-route\")", "stop()"]',1.79662280156660223006e+09);
CREATE TABLE stats (
    domain TEXT NOT NULL,
    tag TEXT NOT NULL,
    event TEXT NOT NULL,
    hour INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, tag, event, hour)
) WITHOUT ROWID;
INSERT INTO "stats" VALUES('example.com','','accepted',499061,7);
INSERT INTO "stats" VALUES('example.com','','accepted:outgoing',499061,7);
INSERT INTO "stats" VALUES('example.com','','delivered',499061,3);
INSERT INTO "stats" VALUES('example.com','','delivered:smtp',499061,3);
INSERT INTO "stats" VALUES('example.com','','failed',499061,2);
INSERT INTO "stats" VALUES('example.com','','failed:permanent',499061,1);
INSERT INTO "stats" VALUES('example.com','','failed:permanent:bounce',499061,1);
INSERT INTO "stats" VALUES('example.com','','failed:temporary',499061,1);
INSERT INTO "stats" VALUES('example.com','legacy','accepted',499061,3);
INSERT INTO "stats" VALUES('example.com','legacy','accepted:outgoing',499061,3);
INSERT INTO "stats" VALUES('example.com','legacy','delivered',499061,3);
INSERT INTO "stats" VALUES('example.com','legacy','delivered:smtp',499061,3);
INSERT INTO "stats" VALUES('inbound.test','','accepted',499061,1);
INSERT INTO "stats" VALUES('inbound.test','','accepted:incoming',499061,1);
INSERT INTO "stats" VALUES('inbound.test','','failed',499061,1);
INSERT INTO "stats" VALUES('inbound.test','','failed:temporary',499061,1);
CREATE TABLE stats_daily (
    domain TEXT NOT NULL,
    tag TEXT NOT NULL,
    event TEXT NOT NULL,
    day INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, tag, event, day)
) WITHOUT ROWID;
INSERT INTO "stats_daily" VALUES('example.com','','accepted:outgoing',20794,7);
INSERT INTO "stats_daily" VALUES('example.com','','delivered:smtp',20794,3);
INSERT INTO "stats_daily" VALUES('example.com','','failed:permanent:bounce',20794,1);
INSERT INTO "stats_daily" VALUES('example.com','','failed:temporary',20794,1);
INSERT INTO "stats_daily" VALUES('example.com','legacy','accepted:outgoing',20794,3);
INSERT INTO "stats_daily" VALUES('example.com','legacy','delivered:smtp',20794,3);
INSERT INTO "stats_daily" VALUES('inbound.test','','accepted:incoming',20794,1);
INSERT INTO "stats_daily" VALUES('inbound.test','','failed:temporary',20794,1);
CREATE TABLE stats_dims (
    domain TEXT NOT NULL,
    dim TEXT NOT NULL,
    value TEXT NOT NULL,
    event TEXT NOT NULL,
    day INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, dim, value, event, day)
) WITHOUT ROWID;
INSERT INTO "stats_dims" VALUES('example.com','ip','127.0.0.1','accepted:outgoing',20794,7);
INSERT INTO "stats_dims" VALUES('example.com','provider','dest.test','accepted:outgoing',20794,5);
INSERT INTO "stats_dims" VALUES('example.com','provider','dest.test','delivered:smtp',20794,3);
INSERT INTO "stats_dims" VALUES('example.com','provider','dest.test','failed:permanent:bounce',20794,1);
INSERT INTO "stats_dims" VALUES('example.com','provider','dest.test','failed:temporary',20794,1);
INSERT INTO "stats_dims" VALUES('example.com','provider','yahoo.test','accepted:outgoing',20794,2);
INSERT INTO "stats_dims" VALUES('inbound.test','ip','127.0.0.1','accepted:incoming',20794,1);
INSERT INTO "stats_dims" VALUES('inbound.test','provider','inbound.test','accepted:incoming',20794,1);
INSERT INTO "stats_dims" VALUES('inbound.test','provider','inbound.test','failed:temporary',20794,1);
CREATE TABLE suppressions (
    domain TEXT NOT NULL,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (domain, kind, address)
) WITHOUT ROWID;
INSERT INTO "suppressions" VALUES('example.com','bounces','bad@dest.test',1.79662280412661743162e+09,'{"code": "550", "error": "5.1.1 <bad@dest.test>: Recipient address rejected: User unknown"}');
INSERT INTO "suppressions" VALUES('example.com','bounces','gone@dest.test',1.79662280158888411525e+09,'{"code": "550", "error": "No such user (made by API)"}');
INSERT INTO "suppressions" VALUES('example.com','complaints','angry@dest.test',1.79662280160944795603e+09,'{}');
INSERT INTO "suppressions" VALUES('example.com','unsubscribes','unsub@dest.test',1.79662280159896349911e+09,'{"tags": ["news"]}');
INSERT INTO "suppressions" VALUES('example.com','whitelists','friend@dest.test',1.79662280161654949184e+09,'{"type": "address", "reason": ""}');
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO "webhook_deliveries" VALUES(1,'AaJPEGQLlb5fK0LkFzfUbQ','example.com','http://@RECEIVER@/delivered','json','done',1,1.79662280396857190127e+09,NULL,NULL,200,'',1.79662280396857190127e+09,1.79662280401560378075e+09);
INSERT INTO "webhook_deliveries" VALUES(2,'AaJPEGQLtmnjg2lAaU8BXg','example.com','http://@RECEIVER@/delivered','json','done',1,1.79662280396857190127e+09,NULL,NULL,200,'',1.79662280396857190127e+09,1.79662280402324533458e+09);
INSERT INTO "webhook_deliveries" VALUES(3,'AaJPEGQPnIOeEy6kFwGl_w','example.com','http://@RECEIVER@/delivered','json','done',1,1.79662280396967339517e+09,NULL,NULL,200,'',1.79662280396967339517e+09,1.79662280404977631569e+09);
INSERT INTO "webhook_deliveries" VALUES(4,'AaJPEGSeVFbAyvtXqApXoA','example.com','http://@RECEIVER@/hook','json','deferred',1,1.79662640417363190644e+09,NULL,NULL,500,'HTTP 500: no',1.79662280412661743162e+09,1.79662280417363190649e+09);
INSERT INTO "webhook_deliveries" VALUES(5,'AaJPEGVsbRJqHnx_BSXf-A','example.com','http://@RECEIVER@/hook','json','deferred',1,1.79662640435305690769e+09,NULL,NULL,500,'HTTP 500: no',1.79662280433062124251e+09,1.7966228043530569076e+09);
INSERT INTO "webhook_deliveries" VALUES(6,'AaJPEGSeVFbAyvtXqApXoA','example.com','http://@RECEIVER@/hook','json','queued',0,1.79662280781240868573e+09,NULL,NULL,NULL,NULL,1.79662280781240868573e+09,1.79662280781240868573e+09);
INSERT INTO "webhook_deliveries" VALUES(7,'AaJPEGVsbRJqHnx_BSXf-A','example.com','http://@RECEIVER@/hook','json','queued',0,1.79662280781240868573e+09,NULL,NULL,NULL,NULL,1.79662280781240868573e+09,1.79662280781240868573e+09);
CREATE TABLE webhooks (
    domain TEXT NOT NULL,
    hook TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (domain, hook, url)
) WITHOUT ROWID;
INSERT INTO "webhooks" VALUES('example.com','clicked','http://@RECEIVER@/clicked','json','api',1.79662280157664132115e+09);
INSERT INTO "webhooks" VALUES('example.com','delivered','http://@RECEIVER@/delivered','json','config',1.79662280118410301208e+09);
INSERT INTO "webhooks" VALUES('example.com','permanent_fail','http://@RECEIVER@/hook','json','config',1.79662280118410301208e+09);
INSERT INTO "webhooks" VALUES('example.com','temporary_fail','http://@RECEIVER@/hook','json','config',1.79662280118410301208e+09);
CREATE INDEX messages_created ON messages(created_at);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX deliveries_message ON deliveries(message);
CREATE INDEX forwards_due ON forwards(state, next_attempt_at);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
CREATE INDEX events_domain_time ON events(domain, timestamp);
CREATE INDEX events_time ON events(timestamp);
CREATE INDEX credentials_domain ON credentials(domain);
CREATE INDEX events_domain_event ON events(domain, event, timestamp);
CREATE INDEX events_recipient_hour
    ON events(domain, CAST(timestamp / 3600 AS INTEGER), recipient COLLATE NOCASE);
CREATE INDEX events_message_hour ON events(domain, CAST(timestamp / 3600 AS INTEGER), message_id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(event_id);
CREATE INDEX stats_tag_event_hour ON stats(tag, event, hour);
CREATE INDEX stats_daily_tag_event_day ON stats_daily(tag, event, day);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('events',14);
COMMIT;
