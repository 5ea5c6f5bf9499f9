// The console end to end in Debian's Chromium, driven by Playwright (playwright-core), against
// a real musterd that tests/tests/console.rs started. It hands the test the token it made
// (WORK/token) and waits for the test to enroll a host with it (WORK/installed). Fails, with
// what it saw, on the first thing that is not as it should be. Screenshots go to SHOTS.
//
// Environment: CONSOLE_URL (https://127.0.0.1:PORT), ADMIN_PASSWORD, API_KEY (named
// console-test), WORK, SHOTS, HOST_NAME.
import { chromium } from 'playwright-core';
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const url = process.env.CONSOLE_URL;
const password = process.env.ADMIN_PASSWORD;
const work = process.env.WORK;
const shots = process.env.SHOTS;
const hostName = process.env.HOST_NAME;
const apiKey = process.env.API_KEY;
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`not so: ${what}`);
  console.log(`ok: ${what}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const violations = [];
try {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 },
  });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
  });
  page.on('pageerror', (e) => violations.push(`page error: ${e.message}`));
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.accept(); });
  const shot = (name, opts) => page.screenshot({ path: join(shots, `${name}.png`), ...opts });

  // The page and its headers.
  const resp = await page.goto(`${url}/console/`);
  const csp = resp.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'") && !csp.includes('unsafe'), `a strict CSP: ${csp}`);
  await page.waitForSelector('#view-sign-in:not([hidden])');
  // Every field has a label.
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select')]
    .filter((i) => !(i.id && document.querySelector(`label[for="${i.id}"]`)) && !i.closest('label'))
    .map((i) => i.id || i.name || i.outerHTML));
  check(unlabelled.length === 0, `every field is labelled (${unlabelled.join(', ')})`);
  await shot('sign-in');

  // A wrong password is refused, by keyboard.
  await page.focus('#password');
  await page.keyboard.type('not the password');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#sign-in-error').textContent.length > 0);
  const refused = await page.textContent('#sign-in-error');
  check(refused.includes('auth.invalid'), `a wrong password is refused: ${refused}`);
  check(await page.isVisible('#view-sign-in'), 'still at the sign-in');

  // The right one, by keyboard too.
  await page.fill('#password', '');
  await page.focus('#password');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#view-hosts:not([hidden])');
  check((await page.textContent('#actor')).includes('user:admin'), 'signed in as user:admin');
  const cookie = (await context.cookies()).find((c) => c.name === 'muster_console');
  check(cookie && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict',
    `the session cookie is HttpOnly, Secure, SameSite=Strict: ${JSON.stringify(cookie && { ...cookie, value: '…' })}`);

  // A change with the cookie but a forged CSRF token, or none, is refused.
  const forged = await page.evaluate(async () => {
    const send = async (headers) => {
      const r = await fetch('/api/v1/platform/configuration/security/enrollment-tokens', {
        method: 'POST', credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', ...headers },
        body: JSON.stringify({ persistent: true, roles: ['proxy'] }),
      });
      return [r.status, (await r.json()).errors[0].code];
    };
    return [await send({ 'X-CSRF-Token': 'forged' }), await send({})];
  });
  check(JSON.stringify(forged) === JSON.stringify([[403, 'auth.csrf_invalid'], [403, 'auth.csrf_invalid']]),
    `a forged or missing CSRF token is refused: ${JSON.stringify(forged)}`);

  // A token: allocator, persistent, with a description that is markup.
  await page.click('#nav a[data-view="tokens"]');
  await page.waitForSelector('#token-roles input[value="allocator"]');
  await page.check('#token-roles input[value="allocator"]');
  await page.check('input[name="kind"][value="persistent"]');
  const markup = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>';
  await page.fill('#description', markup);
  await page.click('#token-form button[type="submit"]');
  await page.waitForSelector('#token-made:not([hidden])');
  const token = (await page.textContent('#made-token')).trim();
  const tokenId = (await page.textContent('#made-id')).trim();
  const oneLiner = await page.textContent('#made-oneliner');
  const cloudInit = await page.textContent('#made-cloudinit');
  const pkg = await page.textContent('#made-package');
  check(token.split('.').length === 3, 'the token is shown');
  check(oneLiner.includes('/install.sh') && oneLiner.includes(`MUSTER_ROLES_TOKEN='${token}'`)
    && oneLiner.includes('--pinnedpubkey'), `the one-liner: ${oneLiner.replace(token, 'TOKEN')}`);
  check(cloudInit.startsWith('#cloud-config') && cloudInit.includes(token), 'the cloud-init user-data');
  check(pkg.includes('muster install --coordinator-host') && pkg.includes(token), 'the package form');
  await page.click('button[data-copy="made-oneliner"]');
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check(copied === oneLiner, 'the copy button copies the one-liner');
  await shot('token-created', { mask: [page.locator('#token-made pre')] });
  const row = page.locator('#tokens tbody tr', { hasText: tokenId });
  check((await row.locator('td').nth(6).textContent()) === markup, 'a description that is markup is shown as text');
  check(await page.evaluate(() => window.pwned === undefined), 'and runs nothing');

  // The test enrolls a host with the token; the hosts page shows it without a reload.
  await page.click('#made-done');
  await page.click('#nav a[data-view="hosts"]');
  await page.waitForSelector('#view-hosts:not([hidden])');
  writeFileSync(join(work, 'token'), token);
  const loads = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) loads.push(f.url()); });
  const deadline = Date.now() + 120000;
  while (!existsSync(join(work, 'installed')) && Date.now() < deadline) await sleep(200);
  check(existsSync(join(work, 'installed')), 'the test enrolled the host');
  const hostRow = page.locator('#hosts tbody tr', { hasText: hostName });
  await hostRow.waitFor({ timeout: 15000 });
  check(loads.filter((u) => !u.includes('#')).length === 0, `the host appeared without a reload (${loads})`);
  check((await hostRow.locator('td').nth(3).textContent()) === 'yes', 'it is connected');
  await page.waitForFunction(() => /[1-9]/.test(document.querySelector('#counts').children[2].textContent));
  check((await page.textContent('#counts')).includes('Enrolled, last hour'), 'the counts show the enrollment');
  await shot('hosts');

  // Grant it the proxy role too.
  await hostRow.locator('button[data-act="roles"]').click();
  await hostRow.locator('input[value="proxy"]').check();
  await hostRow.locator('button', { hasText: 'Save' }).click();
  await page.waitForFunction((name) => [...document.querySelectorAll('#hosts tbody tr')]
    .some((r) => r.textContent.includes(name) && r.children[1].textContent.includes('proxy')), hostName);
  check(true, 'the host holds the proxy role');

  // Revoke the token.
  await page.click('#nav a[data-view="tokens"]');
  await page.locator('#tokens tbody tr', { hasText: tokenId }).locator('button[data-act="revoke"]').click();
  await page.waitForFunction((id) => ![...document.querySelectorAll('#tokens tbody tr')]
    .some((r) => r.textContent.includes(id)), tokenId);
  check(dialogs.some((m) => m.includes(tokenId)), `revoking asked first: ${dialogs.join(' | ')}`);
  check(true, 'the token is revoked and gone from the list');
  await shot('tokens');

  // Both in the audit log, with who did them; a refusal with its meaning.
  await page.evaluate(() => fetch('/api/v1/node/join', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token: 'x.y.z', transport_csr: '', http_csr: '',
      host: { hostname: 'h', addresses: [], memory_mb: 1, zone: '' }, roles: [] }),
  }));
  await page.click('#nav a[data-view="audit"]');
  await page.waitForSelector('#view-audit:not([hidden])');
  // Audit events ride the store's next group commit and the page polls every 3 s: wait for
  // them to be shown rather than read the table once.
  const auditRows = () => page.$$eval('#audit tbody tr', (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)));
  const auditShows = async (what, pred) => {
    const deadline = Date.now() + 20000;
    let rows = await auditRows();
    while (!pred(rows) && Date.now() < deadline) {
      await sleep(250);
      rows = await auditRows();
    }
    check(pred(rows), `${what}: ${JSON.stringify(rows.map((r) => r.slice(1, 3)))}`);
    return rows;
  };
  await page.fill('#audit-token', tokenId);
  const has = (rows, e, a) => rows.some((r) => r[1] === e && r[2] === a);
  await auditShows("the token's life in the audit log", (rows) => has(rows, 'created', 'user:admin')
    && has(rows, 'committed', `token:${tokenId}`) && has(rows, 'revoked', 'user:admin'));
  await page.fill('#audit-token', '');
  await page.fill('#audit-host', hostName);
  await auditShows('the role grant in the audit log', (rows) => rows.some((r) => r[1] === 'roles_set'));
  await page.fill('#audit-host', '');
  await page.selectOption('#audit-kind', 'refused');
  const refusals = await auditShows('a refusal in the audit log', (rows) => rows.some((r) => r[5].includes('token.malformed')));
  const reason = refusals.find((r) => r[5].includes('token.malformed'))[5];
  check(reason.includes('not a roles token'), `and what it means: ${reason}`);
  await page.selectOption('#audit-kind', '');
  await shot('audit');

  // The platform page.
  await page.click('#nav a[data-view="platform"]');
  await page.waitForFunction(() => document.querySelector('#platform dd'));
  const facts = await page.textContent('#platform');
  check(facts.includes('sqlite') && facts.includes('sha256:'), 'the platform: store and CA pins');
  await shot('platform');

  // A host whose name is markup (as a store written by something else could hold), as text.
  await page.route('**/api/v1/platform/infrastructure/runners', async (route) => {
    const real = await (await route.fetch()).json();
    real.runners.push({ ...real.runners[0], runner_id: 'evil', public_hostname: '<script>window.pwned=2</script><img src=x onerror="window.pwned=3">' });
    await route.fulfill({ json: real });
  });
  await page.click('#nav a[data-view="hosts"]');
  await page.waitForFunction(() => document.querySelector('#hosts tbody tr[data-id="evil"]'));
  const shown = await page.textContent('#hosts tbody tr[data-id="evil"] td span');
  check(shown.startsWith('<script>'), `a host name that is markup is shown as text: ${shown}`);
  check(await page.evaluate(() => window.pwned === undefined && !document.querySelector('#hosts img')), 'and runs nothing');
  await page.unroute('**/api/v1/platform/infrastructure/runners');

  // On a phone.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  await shot('hosts-phone', { fullPage: false });
  await page.setViewportSize({ width: 1280, height: 860 });

  // Remove the host (after a confirmation, which the dialog handler accepts).
  await page.click('#nav a[data-view="hosts"]');
  await hostRow.locator('button[data-act="remove"]').click();
  await page.waitForFunction((name) => ![...document.querySelectorAll('#hosts tbody tr')]
    .some((r) => r.textContent.includes(name)), hostName);
  check(dialogs.some((m) => m.startsWith(`Remove host ${hostName}?`)), `removing asked first: ${dialogs.join(' | ')}`);
  check(true, 'the host is removed and gone from the list');

  // 10,000 hosts: how long the page takes to show them (a figure, not a check).
  const many = [];
  const now = Math.floor(Date.now() / 1000);
  for (let i = 0; i < 10000; i += 1) {
    many.push({ runner_id: `n-${i}`, public_hostname: `host-${String(i).padStart(5, '0')}.example.net`, host_ip: '10.0.0.1', connected: i % 7 !== 0, healthy: true, containers: [], roles: [{ role_name: 'allocator' }], zone: `zone-${i % 3}`, pending_roles: [], token_id: 't', last_heartbeat: now - (i % 60), agent_version: '0.1.0', certificate_not_after: now + 86400 * 30 });
  }
  const body = JSON.stringify({ runners: many });
  await page.route('**/api/v1/platform/infrastructure/runners', (route) => route.fulfill({ body, contentType: 'application/json' }));
  await page.click('#nav a[data-view="tokens"]');
  const t0 = Date.now();
  await page.click('#nav a[data-view="hosts"]');
  await page.waitForFunction(() => document.querySelector('#host-count').textContent === '10000 of 10000 hosts'
    && document.querySelectorAll('#hosts tbody tr').length === 100, null, { timeout: 60000 });
  const renderMs = Date.now() - t0;
  check((await page.textContent('#hosts-page')) === '1-100 of 10000', 'a fleet of 10,000 is paged by 100');
  const sortT0 = Date.now();
  await page.click('#hosts th button[data-sort="zone"]');
  await page.waitForFunction(() => document.querySelector('#hosts th button[data-sort="zone"]').getAttribute('aria-sort'));
  const sortMs = Date.now() - sortT0;
  const lastT0 = Date.now();
  await page.fill('#host-filter', 'host-09999');
  await page.waitForFunction(() => document.querySelector('#host-count').textContent === '1 of 10000 hosts');
  const filterMs = Date.now() - lastT0;
  check((await page.textContent('#hosts tbody tr td span')) === 'host-09999.example.net', 'the filter finds the last of them');
  await page.fill('#host-filter', '');
  await page.click('#hosts-next');
  check((await page.textContent('#hosts-page')) === '101-200 of 10000', 'the next page');
  await shot('hosts-10000');
  console.log(`figure: 10000 hosts shown in ${renderMs} ms from the click (fetch, parse, render); sorted again in ${sortMs} ms; filtered to one in ${filterMs} ms`);
  await page.unroute('**/api/v1/platform/infrastructure/runners');

  // Sign out: the session is gone, the API refuses the cookie.
  await page.click('#sign-out');
  await page.waitForSelector('#view-sign-in:not([hidden])');
  const after = await page.evaluate(async () => (await fetch('/api/v1/platform/infrastructure/runners', { credentials: 'same-origin', headers: { 'X-Muster-Console': '1' } })).status);
  check(after === 401, `signed out, the API refuses: ${after}`);

  // An API key signs in too, and the console acts as that key.
  await page.check('input[name="with"][value="key"]');
  await page.fill('#api-key', apiKey);
  await page.press('#api-key', 'Enter');
  await page.waitForSelector('#view-hosts:not([hidden])');
  check((await page.textContent('#actor')).includes('api-key:console-test'), 'signed in with an API key as api-key:console-test');
  await page.click('#sign-out');
  await page.waitForSelector('#view-sign-in:not([hidden])');

  check(violations.length === 0, `no CSP violation or page error: ${violations.join(' | ')}`);
  writeFileSync(join(work, 'done'), 'ok');
} finally {
  await browser.close();
}
