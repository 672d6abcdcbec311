// The demo scenario: a guest browses the guest list, answers the invitation and uploads a photo.
// The target comes from TARGET_URL, so the same script serves staging, production and previews.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.TARGET_URL;
const PHOTO = 'x'.repeat(16 * 1024);

export default function () {
  const guests = http.get(`${BASE}/api/guests`, { tags: { name: 'guest-list' } });
  check(guests, { 'guest list is 200': (r) => r.status === 200 });

  const rsvp = http.post(`${BASE}/api/rsvp`, JSON.stringify({ guest: __VU, attending: true }),
    { headers: { 'Content-Type': 'application/json' }, tags: { name: 'rsvp' } });
  check(rsvp, { 'rsvp is 201': (r) => r.status === 201 });

  const photo = http.post(`${BASE}/api/photos`, PHOTO,
    { headers: { 'Content-Type': 'image/jpeg' }, tags: { name: 'photo-upload' } });
  check(photo, { 'photo is 201': (r) => r.status === 201 });
}
