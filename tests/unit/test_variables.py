"""Mailgun template variables: one substitution for every stage."""

from mtad.mail.variables import RecipientContext, has_recipient_variables, has_variables, substitute


def test_recipient_names_and_missing_values():
    ctx = RecipientContext("ann@example.net", "Ann Lee Smith", {"id": 7, "tags": ["a"]})
    text = "%recipient_email% %recipient_fname% %recipient_lname% %recipient.id% %recipient.tags% [%recipient.nope%]"
    assert substitute(text, ctx) == 'ann@example.net Ann Lee Smith 7 ["a"] []'


def test_recipient_is_the_full_spec_as_mailgun_documents():
    # Mailgun (seed manual 002, "Template Variables"): %recipient% is the full recipient spec, for a To header
    assert substitute("%recipient%|%recipient_name%", RecipientContext("al@example.net", "Alex Lee")) == \
        "Alex Lee <al@example.net>|Alex Lee"
    assert substitute("%recipient%", RecipientContext("al@example.net")) == "al@example.net"
    assert substitute("%recipient%", RecipientContext("al@example.net", "Lee, Alex")) == '"Lee, Alex" <al@example.net>'
    assert substitute("[%recipient_fname%][%recipient_lname%]", RecipientContext("x@example.net")) == "[][]"


def test_system_names_wait_for_their_stage_unless_final():
    ctx = RecipientContext("b@example.net", system={"unsubscribe_url": "https://t.example/u/1"})
    text = "%unsubscribe_url% %mailing_list_unsubscribe_url%"
    assert substitute(text, ctx) == "https://t.example/u/1 %mailing_list_unsubscribe_url%"
    assert substitute(text, ctx, final=True) == "https://t.example/u/1 "


def test_plain_percent_text_is_not_a_variable():
    ctx = RecipientContext("c@example.net")
    assert substitute("50% off, 20%recipient", ctx) == "50% off, 20%recipient"
    assert not has_variables("50% off")
    assert has_variables("Hi %recipient.name%")
    assert has_recipient_variables("Hi %recipient_fname%") and not has_recipient_variables("%unsubscribe_url% 5%")
