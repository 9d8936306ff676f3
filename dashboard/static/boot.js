// Loads the dashboard's wasm-bindgen glue and starts the app; any failure is written into the page
// (and into `data-init-error` on <html>) so a person and a browser test can both see why it did not start.
import init from './edgewarden_dashboard.js';

init({ module_or_path: new URL('./edgewarden_dashboard_bg.wasm', import.meta.url) }).catch((error) => {
  const message = `the dashboard could not start: ${error && error.message ? error.message : error}`;
  document.documentElement.setAttribute('data-init-error', message);
  const p = document.createElement('p');
  p.className = 'init-error';
  p.textContent = message;
  document.body.appendChild(p);
});
