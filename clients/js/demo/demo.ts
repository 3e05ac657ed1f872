/**
 * Chat demo: a room with presence, sequence numbers on every message, an
 * offline/online toggle and live counters proving gap-free, duplicate-free
 * delivery. Served by the gateway at /demo/ (start it with
 * `--allow-client-publish`); `?room=chat:x` picks the room, `?gateway=ws://…`
 * another gateway.
 */
import { createRealtimeClient, type RealtimeEvent } from '../src/index.js';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const room = params.get('room') ?? 'chat:demo';
const url = params.get('gateway') ?? new URL('/ws', location.href).href;
const name = localStorage.getItem('zps-demo-name') ?? `guest-${Math.random().toString(36).slice(2, 6)}`;

const client = createRealtimeClient({ url, subscriberId: `demo-${name}-${Math.random().toString(36).slice(2, 8)}` });
(window as unknown as { zpsClient: typeof client }).zpsClient = client;
$('room').textContent = room;
const form = $<HTMLFormElement>('send');
(form.elements.namedItem('name') as HTMLInputElement).value = name;

const counters = { delivered: 0, duplicates: 0, gaps: 0, discontinuities: 0 };
const show = () => {
  for (const [k, v] of Object.entries(counters)) $(k).textContent = String(v);
};
let last = 0;
const list = $<HTMLUListElement>('messages');
const line = (html: string, cls?: string) => {
  const li = document.createElement('li');
  if (cls) li.className = cls;
  li.innerHTML = html;
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 10;
  list.append(li);
  if (stick) list.scrollTop = list.scrollHeight;
};
const esc = (s: unknown) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

client.subscribe(
  room,
  (e: RealtimeEvent) => {
    // The client guarantees order and exactly-once; these counters check it.
    if (e.sequence <= last) counters.duplicates++;
    else if (e.sequence > last + 1 && last > 0) counters.gaps++;
    last = Math.max(last, e.sequence);
    counters.delivered++;
    const p = e.payload as { name?: string; text?: string };
    line(`<span class="seq">#${e.sequence}</span><b>${esc(p.name ?? '?')}</b>: ${esc(p.text ?? '')}`);
    show();
  },
  {
    fromSequence: 0,
    onDiscontinuity: (d) => {
      counters.discontinuities++;
      last = d.earliestSequence - 1;
      line(`history lost (${d.reason}): continuing at #${d.earliestSequence}`, 'notice');
      show();
    },
  },
);

const presence = client.presence(room);
presence.onChange((members) => {
  $('members').innerHTML = members.map((m) => `<li>${esc((m.metadata?.name as string) ?? m.userId)}</li>`).join('');
});
void presence.enter({ name });

const status = $('status');
client.on('state', (s) => {
  status.textContent = s.status === 'reconnecting' ? `reconnecting (#${s.attempt})` : s.status;
  status.className = s.status;
});
client.on('error', (e) => console.warn('zps:', e.message));

const toggle = $<HTMLButtonElement>('toggle');
toggle.onclick = () => {
  if (client.state.status === 'offline') {
    client.connect();
    toggle.textContent = 'Go offline';
  } else {
    client.disconnect();
    toggle.textContent = 'Go online';
  }
};

const currentName = () => (form.elements.namedItem('name') as HTMLInputElement).value.trim() || name;
form.onsubmit = (ev) => {
  ev.preventDefault();
  const input = form.elements.namedItem('text') as HTMLInputElement;
  const text = input.value.trim();
  if (!text) return;
  localStorage.setItem('zps-demo-name', currentName());
  input.value = '';
  client.publish(room, 'message.created', { name: currentName(), text }).catch((e: Error) => line(`not sent: ${esc(e.message)}`, 'notice'));
};
$<HTMLButtonElement>('burst').onclick = () => {
  for (let i = 1; i <= 20; i++) void client.publish(room, 'message.created', { name: currentName(), text: `burst ${i}/20` });
};
