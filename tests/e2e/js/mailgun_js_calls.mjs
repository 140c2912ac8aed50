// Drives mtad with mailgun.js 14 (installed by tests/run.sh into tests/.node): each call's result or error
// status, as one JSON object on stdout. Usage: node mailgun_js_calls.mjs API_URL API_KEY DOMAIN RECIPIENT
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../.node/', import.meta.url));
const Mailgun = require('mailgun.js');
const [apiUrl, key, domain, recipient] = process.argv.slice(2);
const mg = new Mailgun(FormData).client({ username: 'api', key, url: apiUrl });
const out = {};

async function call(name, fn) {
  try {
    out[name] = { ok: true, value: await fn() };
  } catch (err) {
    out[name] = { ok: false, status: err.status ?? null, message: String(err.details ?? err.message ?? err) };
  }
}

await call('domains.list', async () => (await mg.domains.list()).map((d) => d.name));
await call('domains.get', async () => {
  const d = await mg.domains.get(domain);
  return { name: d.name, state: d.state, sending: (d.sending_dns_records || []).length };
});
await call('domains.create', async () => (await mg.domains.create({ name: 'js14.test', dkim_key_size: '1024' })).name);
await call('domains.verify', async () => (await mg.domains.verify('js14.test')).name);
await call('credentials.create', async () => (await mg.domains.domainCredentials.create(
  'js14.test', { login: 'alice', password: 'alice-password' })).message);
await call('credentials.list', async () => (await mg.domains.domainCredentials.list('js14.test')).items.map((c) => c.login));
await call('credentials.destroyAll', async () => (await mg.domains.domainCredentials.destroyAll('js14.test')).count);
await call('domains.destroy', async () => (await mg.domains.destroy('js14.test')).message);
await call('messages.create', async () => (await mg.messages.create(domain, {
  from: `JS <postmaster@${domain}>`, to: [recipient], subject: 'Hello from mailgun.js', text: 'Hi', 'o:tag': ['js'],
})).status);
await call('routes.list', async () => (await mg.routes.list()).length >= 0);
await call('webhooks.list', async () => Object.keys(await mg.webhooks.list(domain, {})));
await call('suppressions.list', async () => (await mg.suppressions.list(domain, 'bounces')).items.length >= 0);
await call('stats.getDomain', async () => (await mg.stats.getDomain(domain, { event: ['accepted'] })).stats.length > 0);
await call('events.get', async () => (await mg.events.get(domain, { event: 'accepted' })).items.length >= 0);
await call('tags.list', async () => (await mg.domains.domainTags.list(domain)).items.length >= 0);
process.stdout.write(JSON.stringify(out));
