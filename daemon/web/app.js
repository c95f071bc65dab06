'use strict';
// The cgw console: one page, no framework. Live state by Server-Sent Events.
const SEV = {critical: '紧急', major: '重要', minor: '次要', warning: '提示'};
const SEV_RANK = {critical: 0, major: 1, minor: 2, warning: 3};
const STATE = {'active-unacked': '未确认', 'active-acked': '已确认', 'cleared-unacked': '已恢复 待确认', shelved: '已搁置', normal: '正常'};
const EVENT = {raised: '报警', cleared: '恢复', acknowledged: '确认', shelved: '搁置', unshelved: '解除搁置'};
const LOST_AFTER_MS = 4000; // the gateway beats every 2 s: two missed

const $ = (id) => document.getElementById(id);
let me = null, loginCsrf = null, es = null, lastEvent = 0, board = {alarms: [], uplinks: []};
let tab = 'board';
// hooks for tests and for whoever watches: alerts started, beeps played
const hook = window.cgwConsole = {alerts: 0, beeps: 0, sound: false, lost: false, state: null};
const seen = new Set(), silenced = new Set();
let audio = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

async function api(path, form) {
  const opt = {credentials: 'same-origin', headers: {}};
  if (form) {
    opt.method = 'POST';
    opt.headers['Content-Type'] = 'application/x-www-form-urlencoded';
    opt.headers['X-CSRF-Token'] = me ? me.csrf : loginCsrf;
    opt.body = new URLSearchParams(form).toString();
  }
  const r = await fetch(path, opt);
  let j = {};
  try { j = await r.json(); } catch (e) { /* empty */ }
  return {status: r.status, body: j};
}

function age(ms) {
  const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
  if (s < 60) return s + ' 秒前';
  if (s < 3600) return Math.floor(s / 60) + ' 分钟前';
  if (s < 86400) return Math.floor(s / 3600) + ' 小时 ' + Math.floor(s % 3600 / 60) + ' 分钟前';
  return Math.floor(s / 86400) + ' 天前';
}
const hhmm = (ms) => new Date(ms).toLocaleTimeString('zh-CN', {hour: '2-digit', minute: '2-digit'});
const when = (ms) => new Date(ms).toLocaleString('zh-CN', {hour12: false});

// ---- sound ----
function enableSound() {
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    audio.resume();
    hook.sound = true;
    $('sound').textContent = '声音已开启';
    $('sound').classList.add('on');
  } catch (e) { /* no audio */ }
}
function beep() {
  if (!audio || audio.state !== 'running') return false;
  const o = audio.createOscillator(), g = audio.createGain();
  o.type = 'square'; o.frequency.value = 880;
  g.gain.value = 0.2;
  o.connect(g); g.connect(audio.destination);
  o.start(); o.stop(audio.currentTime + 0.4);
  hook.beeps++;
  return true;
}
function alarming() {
  return board.alarms.some((a) => a.severity === 'critical' && a.state === 'active-unacked' && !silenced.has(a.alarm_id));
}
setInterval(() => { if (me && alarming()) beep(); }, 1200);

// ---- board ----
function renderBoard() {
  const list = $('alarms');
  const alarms = board.alarms.slice().sort((a, b) => (SEV_RANK[a.severity] - SEV_RANK[b.severity]) || (b.raised_at - a.raised_at));
  list.replaceChildren(...alarms.map((a) => el('li', {class: a.severity + ' ' + a.state, 'data-alarm': a.alarm_id},
    el('div', {class: 'sev'}, SEV[a.severity] || a.severity),
    el('div', {},
      el('div', {class: 'name'}, a.name || a.device),
      el('div', {class: 'where'}, a.location || ''),
      el('div', {class: 'text'}, a.message),
      el('div', {class: 'meta'}, STATE[a.state] || a.state, ' · ', el('span', {class: 'age', 'data-ts': a.raised_at}, age(a.raised_at)))),
    (a.state === 'active-unacked' || a.state === 'cleared-unacked')
      ? el('button', {class: 'ack', onclick: () => ack(a)}, '确认') : el('span'))));
  $('board-empty').hidden = alarms.length > 0;
  $('silence').hidden = !alarming();
  const down = board.uplinks.filter((u) => !u.connected);
  const ban = $('uplink');
  if (down.length) {
    const backlog = board.uplinks.reduce((n, u) => n + u.backlog, 0);
    const since = Math.min(...down.map((u) => u.since || Date.now()));
    ban.textContent = `平台连接中断 自 ${hhmm(since)}，${backlog.toLocaleString('en-US')} 条消息待发送；报警仍在此显示`;
    ban.hidden = false;
  } else {
    ban.hidden = true;
  }
}
setInterval(() => document.querySelectorAll('.age').forEach((e) => { e.textContent = age(+e.dataset.ts); }), 1000);

async function ack(a) {
  const r = await api('/api/ack', {alarm: a.alarm_id});
  if (r.status !== 200) alert('确认失败：' + (r.body.detail || r.body.error || r.status));
}

function onState(s) {
  board = s;
  hook.state = s;
  for (const a of s.alarms) {
    if (!seen.has(a.alarm_id)) {
      seen.add(a.alarm_id);
      if (a.severity === 'critical' && a.state === 'active-unacked') {
        hook.alerts++;
        beep();
      }
    }
  }
  renderBoard();
}

// ---- live stream ----
function setLost(lost) {
  hook.lost = lost;
  $('lost').hidden = !lost;
}
function connect() {
  if (es) es.close();
  es = new EventSource('/api/events');
  const alive = () => { lastEvent = Date.now(); setLost(false); };
  es.addEventListener('state', (e) => { alive(); onState(JSON.parse(e.data)); });
  es.addEventListener('beat', () => { alive(); if (tab === 'devices' && !document.hidden) loadDevices(); });
  es.onopen = alive;
  es.onerror = async () => {
    setLost(true);
    if (es.readyState === EventSource.CLOSED) { // refused: signed out?
      es = null;
      setTimeout(start, 2000);
    }
  };
}
setInterval(() => { if (me && Date.now() - lastEvent > LOST_AFTER_MS) setLost(true); }, 250);

// ---- devices ----
async function loadDevices() {
  const r = await api('/api/devices');
  if (r.status !== 200) return;
  const devs = r.body.devices;
  for (const [sel, key] of [['dev-building', 'building'], ['dev-bus', 'bus']]) {
    const s = $(sel), cur = s.value;
    const vals = [...new Set(devs.map((d) => d[key]).filter(Boolean))].sort();
    s.replaceChildren(el('option', {value: ''}, '全部'), ...vals.map((v) => el('option', {value: v}, v)));
    s.value = cur;
  }
  const b = $('dev-building').value, bus = $('dev-bus').value;
  const inst = me.role !== 'duty';
  $('dev-rows').replaceChildren(...devs.filter((d) => (!b || d.building === b) && (!bus || d.bus === bus)).map((d) => {
    const c = d.counters || {};
    const errs = (c.timeouts || 0) + (c.exceptions || 0) + (c.crc_errors || 0) + (c.conn_errors || 0) + (c.bad_payloads || 0);
    const tools = el('td', {class: 'inst'}, el('button', {class: 'hist', onclick: () => deviceHistory(d)}, '报警记录'));
    if (inst) {
      tools.append(el('button', {onclick: () => shelve(d, !d.shelved)}, d.shelved ? '解除搁置' : '搁置'));
      for (const p of d.writable) tools.append(el('button', {onclick: () => writePoint(d, p)}, '写 ' + p));
    }
    return el('tr', {'data-device': d.id},
      el('td', {}, d.name, el('br'), el('small', {}, d.id)),
      el('td', {}, d.location),
      el('td', {}, d.bus),
      el('td', {class: d.state}, {online: '在线', offline: '离线'}[d.state] || '未知', d.shelved ? '（搁置中）' : ''),
      el('td', {}, d.last_ok ? when(d.last_ok) : '—'),
      el('td', {}, String(errs)),
      el('td', {}, ...d.points.map((p) => el('div', {class: 'q-' + p.quality}, `${p.name} = ${p.value}${p.unit ? ' ' + p.unit : ''}${p.quality !== 'good' ? '（' + p.quality + '）' : ''}`))),
      tools);
  }));
}
async function shelve(d, on) {
  if (!confirm(`${on ? '搁置' : '解除搁置'} ${d.name}？`)) return;
  const r = await api('/api/shelve', {device: d.id, on: on ? '1' : '0'});
  if (r.status !== 200) alert('失败：' + (r.body.error || r.status));
  loadDevices();
}
async function writePoint(d, p) {
  const v = prompt(`写入 ${d.name} 的 ${p}，值：`);
  if (v == null || v === '') return;
  if (!confirm(`确认将 ${d.name} 的 ${p} 写为 ${v}？`)) return;
  const r = await api('/api/write', {device: d.id, point: p, value: v});
  alert(r.status === 200 ? '写入成功' : '写入失败：' + (r.body.detail || r.body.error || r.status));
  loadDevices();
}

function deviceHistory(d) {
  const f = $('hist-form');
  f.reset();
  f.elements.device.value = d.id;
  show('history');
}

// ---- history ----
async function loadHistory() {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($('hist-form'))) if (v) q.set(k, v);
  const r = await api('/api/history?' + q);
  q.set('format', 'csv');
  $('csv').href = '/api/history?' + q;
  if (r.status !== 200) { alert(r.body.error || r.status); return; }
  $('hist-rows').replaceChildren(...r.body.history.map((h) => el('tr', {},
    el('td', {}, when(h.ts)), el('td', {}, h.device), el('td', {}, h.building || ''), el('td', {}, h.alarm),
    el('td', {}, EVENT[h.event] || h.event), el('td', {class: h.severity}, SEV[h.severity] || h.severity),
    el('td', {}, h.by || ''), el('td', {}, h.message || ''))));
}

// ---- commissioning (installers): scan a bus, probe a unit's registers ----
const ANSWER = {ok: '有应答', exception: '应答异常', timeout: '无应答（超时）', error: '错误'};
function ranges(ids) {
  const out = [];
  for (let i = 0; i < ids.length; i++) {
    let j = i;
    while (j + 1 < ids.length && ids[j + 1] === ids[j] + 1) j++;
    out.push(j > i ? `${ids[i]}-${ids[j]}` : String(ids[i]));
    i = j;
  }
  return out.join(',');
}
async function loadBuses() {
  const r = await api('/api/devices');
  if (r.status !== 200) return;
  const buses = [...new Set(r.body.devices.map((d) => d.bus))].sort();
  document.querySelectorAll('select.buses').forEach((s) => {
    const cur = s.value;
    s.replaceChildren(...buses.map((b) => el('option', {value: b}, b)));
    if (cur) s.value = cur;
  });
}
function formObj(f) {
  const o = {};
  for (const [k, v] of new FormData(f)) if (v !== '') o[k] = v;
  return o;
}
async function scan(e) {
  e.preventDefault();
  const f = e.target, msg = $('scan-msg'), btn = f.querySelector('button');
  btn.disabled = true;
  msg.textContent = '扫描中……（在两次轮询之间逐个站号读取，不影响正常采集）';
  msg.classList.remove('ok');
  $('scan-rows').replaceChildren();
  $('scan-quiet').textContent = '';
  try {
    const r = await api('/api/scan', formObj(f));
    if (r.status !== 200) { msg.textContent = '扫描失败：' + (r.body.detail || r.body.error || r.status); return; }
    const sc = r.body.scan, quiet = [];
    const rows = [];
    for (const u of sc.units) {
      if (u.result === 'timeout') { quiet.push(u.unit); continue; }
      rows.push(el('tr', {'data-unit': u.unit}, el('td', {}, String(u.unit)),
        el('td', {class: u.result === 'ok' ? 'online' : 'offline'}, (ANSWER[u.result] || u.result) + (u.detail ? '：' + u.detail : ''))));
    }
    $('scan-rows').replaceChildren(...rows);
    msg.textContent = `总线 ${sc.bus}：已扫描 ${sc.units.length} 个站号，${rows.length} 个有应答`;
    msg.classList.add('ok');
    $('scan-quiet').textContent = quiet.length ? `无应答（超时）：${ranges(quiet)}` : '';
  } finally {
    btn.disabled = false;
  }
}
const fmtNum = (v) => v == null ? 'NaN' : (typeof v === 'number' && !Number.isInteger(v) ? String(+v.toPrecision(9)) : String(v));
async function probe(e) {
  e.preventDefault();
  const f = e.target, msg = $('probe-msg');
  msg.textContent = '读取中……';
  msg.classList.remove('ok');
  $('probe-rows').replaceChildren();
  $('probe-wide').replaceChildren();
  const r = await api('/api/probe', formObj(f));
  if (r.status !== 200) { msg.textContent = '读取失败：' + (r.body.detail || r.body.error || r.status); return; }
  const p = r.body.probe, a0 = p.address;
  if (p.result !== 'ok') { msg.textContent = (ANSWER[p.result] || p.result) + (p.detail ? '：' + p.detail : ''); return; }
  msg.textContent = `总线 ${p.bus} 站号 ${p.unit}：${(p.registers || p.bits).length} 个${p.bits ? '位' : '寄存器'}`;
  msg.classList.add('ok');
  const ch = (c) => (c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : '.');
  if (p.bits) {
    $('probe-rows').replaceChildren(...p.bits.map((b, i) => el('tr', {}, el('td', {}, String(a0 + i)), el('td', {}, b ? '1（开）' : '0（关）'), el('td'), el('td'), el('td'))));
    return;
  }
  $('probe-rows').replaceChildren(...p.registers.map((w, i) => el('tr', {},
    el('td', {}, String(a0 + i)), el('td', {}, '0x' + w.toString(16).toUpperCase().padStart(4, '0')),
    el('td', {}, String(w)), el('td', {}, String(w > 32767 ? w - 65536 : w)), el('td', {}, ch(w >> 8) + ch(w & 0xff)))));
  const rd = p.readings || {};
  $('probe-wide').replaceChildren(...['int32', 'uint32', 'float32', 'int64', 'uint64', 'float64'].filter((t) => rd[t]).map((t) =>
    el('tr', {'data-type': t}, el('td', {}, t), ...['ABCD', 'CDAB', 'BADC', 'DCBA'].map((o) => el('td', {}, fmtNum(rd[t][o]))))));
}

// ---- pages ----
function show(t) {
  if (t === 'commission' && (!me || me.role === 'duty')) t = 'board';
  tab = t;
  for (const s of ['board', 'devices', 'history', 'commission']) $(s).hidden = s !== t;
  document.querySelectorAll('#tabs button').forEach((b) => b.classList.toggle('on', b.dataset.tab === t));
  if (t === 'devices') loadDevices();
  if (t === 'history') loadHistory();
  if (t === 'commission') loadBuses();
}

async function start() {
  const r = await api('/api/session');
  if (r.status === 200) {
    me = r.body;
    $('who').textContent = `${me.user}（${{duty: '值班', installer: '安装调试', admin: '管理员'}[me.role]}） ${me.site} / ${me.gateway}`;
    $('login').hidden = true;
    for (const id of ['tabs', 'logout', 'sound']) $(id).hidden = false;
    $('tab-commission').hidden = me.role === 'duty';
    document.body.dataset.role = me.role;
    show(tab);
    connect();
  } else {
    me = null;
    loginCsrf = r.body.login_csrf;
    for (const id of ['tabs', 'logout', 'sound', 'silence', 'board', 'devices', 'history', 'commission', 'lost', 'uplink']) $(id).hidden = true;
    $('login').hidden = false;
    $('who').textContent = '';
    if (r.body.accounts === false) $('login-msg').textContent = '还没有账号：在网关上执行 cgwctl user add 用户名 admin';
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const r = await api('/api/login', {user: f.get('user'), password: f.get('password')});
    if (r.status === 200) { $('login-msg').textContent = ''; e.target.reset(); start(); } else {
      $('login-msg').textContent = r.body.error || ('登录失败 ' + r.status);
      if (r.status === 403) start();
    }
  });
  $('logout').addEventListener('click', async () => {
    await api('/api/logout', {});
    if (es) { es.close(); es = null; }
    start();
  });
  $('sound').addEventListener('click', enableSound);
  $('silence').addEventListener('click', () => { board.alarms.forEach((a) => silenced.add(a.alarm_id)); renderBoard(); });
  document.querySelectorAll('#tabs button').forEach((b) => b.addEventListener('click', () => show(b.dataset.tab)));
  $('dev-refresh').addEventListener('click', loadDevices);
  $('dev-building').addEventListener('change', loadDevices);
  $('dev-bus').addEventListener('change', loadDevices);
  $('hist-form').addEventListener('submit', (e) => { e.preventDefault(); loadHistory(); });
  $('scan-form').addEventListener('submit', scan);
  $('probe-form').addEventListener('submit', probe);
  start();
});
