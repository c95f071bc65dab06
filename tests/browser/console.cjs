// The console in a real browser (Debian's chromium, driven by playwright-core).
// Run by tests/integration/console.sh, which starts everything and passes:
// URL, SUB (the platform subscriber's output), TOPIC, SHOTS (screenshot
// directory), SIM_CMD, STOP_BROKER, HANG_CGWD, CONT_CGWD, STOP_CGWD.
// Prints "PASS what" / "FAIL what" lines; anything else is a diagnostic.
'use strict';
const {chromium} = require(process.env.NODE_MODULES + '/playwright-core');
const {execSync} = require('child_process');
const fs = require('fs');

const env = process.env;
const sim = (cmd) => execSync(env.SIM_CMD, {input: cmd + '\n'}).toString().trim();
const sh = (cmd) => execSync(cmd);
const pass = (what) => console.log('PASS ' + what);
const fail = (what, e) => console.log('FAIL ' + what + (e ? ': ' + String(e.message || e).split('\n')[0] : ''));
async function step(what, fn) {
  try { const r = await fn(); pass(typeof r === 'string' ? `${what} (${r})` : what); return true; } catch (e) { fail(what, e); return false; }
}
async function until(ms, fn, what) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error('not within ' + ms + ' ms: ' + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

(async () => {
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required', '--disable-gpu'],
  });
  const page = await browser.newPage({viewport: {width: 1100, height: 700}, locale: 'zh-CN'});
  page.on('pageerror', (e) => console.log('page error: ' + e.message));
  try {
    await page.goto(env.URL);
    await step('the login form is shown', () => page.waitForSelector('#login-form', {state: 'visible', timeout: 5000}));
    await page.fill('input[name=user]', 'duty1');
    await page.fill('input[name=password]', 'wrong-password');
    await page.click('#login-form button');
    await step('a wrong password is refused in words', () => page.waitForSelector('#login-msg:has-text("用户名或密码错误")', {timeout: 5000}));
    await page.fill('input[name=password]', 'duty-pass-1');
    await page.click('#login-form button');
    await step('duty1 signs in and sees the board', () => page.waitForSelector('#board', {state: 'visible', timeout: 5000}));
    await page.click('#sound'); // the gesture some browsers want before sound

    // a fire
    const t0 = Date.now();
    sim('set smoke-b3-3f-01 status 1');
    const li = page.locator('#alarms li.critical', {hasText: '烟感报警'});
    await step('the fire alarm is on the board within 2 s', async () => {
      await li.waitFor({timeout: 2000});
      return `${Date.now() - t0} ms after the register changed`;
    });
    await step('with its words and location', async () => {
      const text = await li.innerText();
      if (!text.includes('3号楼3层东侧楼梯间烟感 烟感报警') || !text.includes('3号楼 3层 东侧楼梯间') || !text.includes('紧急') || !text.includes('未确认'))
        throw new Error('board shows: ' + text);
    });
    await step('the page plays the alert (beeps counted by window.cgwConsole)', () =>
      until(2000, () => page.evaluate(() => window.cgwConsole.alerts >= 1 && window.cgwConsole.beeps >= 1), 'alert played'));
    await step('it keeps beeping until acknowledged', async () => {
      const b = await page.evaluate(() => window.cgwConsole.beeps);
      await until(3000, async () => (await page.evaluate(() => window.cgwConsole.beeps)) > b, 'another beep');
    });
    await page.screenshot({path: env.SHOTS + '/board.png'});

    // acknowledge
    await li.locator('button.ack').click();
    await step('acknowledged: the platform receives "acknowledged" by the signed-in user', () =>
      until(5000, () => fs.readFileSync(env.SUB, 'utf8').split('\n').some((l) =>
        l.startsWith(env.TOPIC + '/device/smoke-b3-3f-01/alarm ') && l.includes('"event":"acknowledged"') && l.includes('duty1')), 'ack on the platform'));
    await step('the board shows it acknowledged and the beeping stops', async () => {
      await page.locator('#alarms li.critical.active-acked', {hasText: '烟感报警'}).waitFor({timeout: 3000});
      const b = await page.evaluate(() => window.cgwConsole.beeps);
      await new Promise((r) => setTimeout(r, 2500));
      const b2 = await page.evaluate(() => window.cgwConsole.beeps);
      if (b2 !== b) throw new Error(`still beeping (${b} -> ${b2})`);
    });

    // the platform goes away
    sh(env.STOP_BROKER);
    await step('broker stopped: the banner says the platform is down, with the backlog', async () => {
      await page.locator('#uplink', {hasText: '平台连接中断'}).waitFor({timeout: 10000});
      return await page.locator('#uplink').innerText();
    });
    sim('set station-b3 call_point true');
    await step('an alarm raised during the outage shows on the board', () =>
      page.locator('#alarms li.critical', {hasText: '手动报警按钮动作'}).waitFor({timeout: 3000}));
    await step('and it is alerted too', () => until(2000, () => page.evaluate(() => window.cgwConsole.alerts >= 2), 'second alert'));
    await step('newest critical first', async () => {
      const first = await page.locator('#alarms li').first().innerText();
      if (!first.includes('手动报警按钮动作')) throw new Error('first is: ' + first);
    });
    await step('the backlog counts up in the banner', () =>
      until(8000, async () => /[1-9][\d,]* 条消息待发送/.test(await page.locator('#uplink').innerText()), 'backlog > 0'));
    await page.screenshot({path: env.SHOTS + '/board-outage.png'});
    await page.click('#silence');
    await step('silence stops the beeping', async () => {
      const b = await page.evaluate(() => window.cgwConsole.beeps);
      await new Promise((r) => setTimeout(r, 2500));
      if ((await page.evaluate(() => window.cgwConsole.beeps)) !== b) throw new Error('still beeping');
    });

    // devices and history
    await page.click('#tabs button[data-tab=devices]');
    await step('the devices page lists the devices with their points', () =>
      page.locator('#dev-rows tr', {hasText: '3号楼微型消防站'}).locator('text=hydrant_pressure = 0.35').waitFor({timeout: 5000}));
    await step('a duty user is offered no installer tools', async () => {
      if (await page.locator('#dev-rows button:not(.hist)').count()) throw new Error('tools shown to duty');
    });
    await step('a duty user is offered no commissioning tab', async () => {
      if (await page.locator('#tab-commission').isVisible()) throw new Error('调试 shown to duty');
    });
    await step("a duty user's scan POST is refused by the server (403), not only hidden", async () => {
      const r = await page.evaluate(() => api('/api/scan', {bus: 'fire-io', units: '1-8'}));
      if (r.status !== 403) throw new Error('HTTP ' + r.status + ' ' + JSON.stringify(r.body));
      return `HTTP ${r.status} ${r.body.error}`;
    });
    await page.screenshot({path: env.SHOTS + '/devices.png'});
    await page.locator('#dev-rows tr', {hasText: '3号楼微型消防站'}).locator('button.hist').click();
    await step("a device's recent alarms, from its row", () => until(3000, async () => {
      const rows = await page.locator('#hist-rows tr').allInnerTexts();
      return rows.length > 0 && rows.every((r) => r.includes('station-b3')) && rows.some((r) => r.includes('手动报警按钮动作'));
    }, 'the station\'s history'));
    await page.fill('#hist-form input[name=device]', '');
    await page.click('#hist-form button');
    await page.click('#tabs button[data-tab=history]');
    await step('the history shows raise and acknowledgement with who', async () => {
      await page.locator('#hist-rows tr', {hasText: 'console:duty1'}).first().waitFor({timeout: 5000});
      await page.locator('#hist-rows tr', {hasText: '报警'}).first().waitFor({timeout: 5000});
    });
    await page.fill('#hist-form input[name=device]', 'station-b3');
    await page.click('#hist-form button');
    await step('the history filters by device', () => until(3000, async () => {
      const rows = await page.locator('#hist-rows tr').allInnerTexts();
      return rows.length > 0 && rows.every((r) => r.includes('station-b3'));
    }, 'only station-b3'));
    await page.fill('#hist-form input[name=device]', '');
    await page.click('#hist-form button');
    await page.waitForTimeout(300);
    await page.screenshot({path: env.SHOTS + '/history.png'});
    await step('CSV export of the history', async () => {
      const csv = await page.evaluate(async () => (await fetch(document.getElementById('csv').href)).text());
      if (!csv.includes('"时间","设备"') || !csv.includes('smoke-b3-3f-01')) throw new Error(csv.slice(0, 200));
    });
    await page.click('#tabs button[data-tab=board]');

    // an installer, in a second browser context: shelves a device, writes a point
    const ctx2 = await browser.newContext({viewport: {width: 1100, height: 700}, locale: 'zh-CN'});
    const inst = await ctx2.newPage();
    const dialogs = [];
    inst.on('dialog', (d) => { dialogs.push(d.message()); d.type() === 'prompt' ? d.accept('false') : d.accept(); });
    await inst.goto(env.URL);
    await inst.fill('input[name=user]', 'inst1');
    await inst.fill('input[name=password]', 'inst-pass-1');
    await inst.click('#login-form button');
    await inst.waitForSelector('#board', {state: 'visible', timeout: 5000});
    await inst.click('#tabs button[data-tab=devices]');
    const smoke = inst.locator('#dev-rows tr', {hasText: '3号楼3层东侧楼梯间烟感'});
    await smoke.locator('button', {hasText: '搁置'}).click();
    await step('an installer shelves a device (after confirming)', async () => {
      await inst.locator('#dev-rows tr', {hasText: '3号楼3层东侧楼梯间烟感'}).locator('text=搁置中').waitFor({timeout: 5000});
      if (!dialogs.some((m) => m.includes('搁置'))) throw new Error('no confirmation asked');
    });
    await step('its fire alarm stays on the duty board, not shelved (fire alarms never are)', async () => {
      await page.waitForTimeout(2500);
      const t = await page.locator('#alarms li', {hasText: '烟感报警'}).innerText();
      if (t.includes('已搁置')) throw new Error(t);
    });
    await inst.screenshot({path: env.SHOTS + '/devices-installer.png'});
    const station = inst.locator('#dev-rows tr', {hasText: '3号楼微型消防站'});
    await station.locator('button', {hasText: '写 pump_start'}).click();
    await step('an installer writes a point: value asked, confirmed, the device answers', async () => {
      await until(5000, () => dialogs.some((m) => m.includes('写入成功')), 'written');
      if (!dialogs.some((m) => m.startsWith('确认将'))) throw new Error('no confirmation asked: ' + dialogs.join(' | '));
      if (sim('get station-b3 pump_start') !== 'false') throw new Error('device has ' + sim('get station-b3 pump_start'));
    });
    await step('and reads it back on the devices page', () =>
      inst.locator('#dev-rows tr', {hasText: '3号楼微型消防站'}).locator('text=pump_start = false').waitFor({timeout: 5000}));

    // commissioning: the installer scans the bus and sees the simulated units
    await inst.click('#tabs button[data-tab=commission]');
    await inst.locator('#scan-form select[name=bus] option[value=fire-io]').waitFor({state: 'attached', timeout: 5000});
    await inst.fill('#scan-form input[name=units]', '1-8');
    await inst.fill('#scan-form input[name=timeout_ms]', '50'); // the line is polled every 200 ms
    const ts = Date.now();
    await inst.click('#scan-form button');
    await step('an installer scans the bus: the simulated units 1, 3 and 7 answer (7 is configured nowhere)', async () => {
      await inst.locator('#scan-msg', {hasText: '已扫描 8 个站号'}).waitFor({timeout: 20000});
      const rows = await inst.locator('#scan-rows tr').allInnerTexts();
      // unit 1 (the station) has no holding register 0: it answers with an exception
      const ans = rows.filter((r) => /有应答|应答异常/.test(r)).map((r) => parseInt(r, 10));
      if (JSON.stringify(ans) !== '[1,3,7]') throw new Error('answering: ' + rows.join(' | '));
      return `${Date.now() - ts} ms`;
    });
    await step('and the quiet ones as ranges', async () => {
      const q = await inst.locator('#scan-quiet').innerText();
      if (!q.includes('2,4-6,8')) throw new Error(q);
    });
    await inst.fill('#probe-form input[name=unit]', '1');
    await inst.fill('#probe-form input[name=address]', '0');
    await inst.fill('#probe-form input[name=count]', '4');
    await inst.selectOption('#probe-form select[name=table]', 'input');
    await inst.click('#probe-form button');
    await step("an installer probes a unit's registers and sees them read every way", async () => {
      await inst.locator('#probe-msg', {hasText: '4 个寄存器'}).waitFor({timeout: 10000});
      if ((await inst.locator('#probe-rows tr').count()) !== 4) throw new Error('rows');
      // the station's hydrant pressure: float32 ABCD at input 0, 0.35 MPa
      const f = await inst.locator('#probe-wide tr[data-type=float32] td').allInnerTexts();
      if (f[1] !== '0.35') throw new Error('float32 row: ' + f.join(' '));
    });
    await inst.screenshot({path: env.SHOTS + '/commissioning.png'});
    await ctx2.close();

    // the gateway stops answering
    sh(env.HANG_CGWD);
    let t1 = Date.now();
    await step('cgwd hung: "connection lost" within 5 s', async () => {
      await page.locator('#lost').waitFor({state: 'visible', timeout: 5000});
      return `${Date.now() - t1} ms`;
    });
    sh(env.CONT_CGWD);
    await step('cgwd back: the page reconnects by itself', () => page.locator('#lost').waitFor({state: 'hidden', timeout: 10000}));
    sh(env.STOP_CGWD);
    t1 = Date.now();
    await step('cgwd stopped: "connection lost" within 5 s', async () => {
      await page.locator('#lost').waitFor({state: 'visible', timeout: 5000});
      return `${Date.now() - t1} ms`;
    });
  } catch (e) {
    fail('browser run', e);
  } finally {
    await browser.close();
  }
})();
