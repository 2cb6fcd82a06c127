#!/usr/bin/env node
// Opens the maps page in headless Chromium (the system's, driven by puppeteer-core), waits for it to
// compute, saves a screenshot and prints #result's JSON: how the tests check the page.
//
//   node check-page.mjs URL screenshot.png [--chromium /usr/bin/chromium] [--timeout 60]
import puppeteer from 'puppeteer-core';

const [url, screenshot, ...rest] = process.argv.slice(2);
const option = (name, fallback) => (rest.includes(name) ? rest[rest.indexOf(name) + 1] : fallback);
if (!url || !screenshot) {
  process.stderr.write('usage: node check-page.mjs URL screenshot.png [--chromium PATH] [--timeout SECONDS]\n');
  process.exit(2);
}
const browser = await puppeteer.launch({
  executablePath: option('--chromium', process.env.CHROMIUM || '/usr/bin/chromium'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 720 });
  const messages = [];
  page.on('console', (message) => messages.push(message.text()));
  page.on('pageerror', (err) => messages.push(String(err)));
  await page.goto(url);
  const timeout = 1000 * Number(option('--timeout', '60'));
  await page.waitForFunction(() => document.body.dataset.state, { timeout }).catch(() => {});
  const state = await page.evaluate(() => document.body.dataset.state || 'timeout');
  await page.screenshot({ path: screenshot, fullPage: true });
  if (state !== 'done') {
    const status = await page.evaluate(() => document.getElementById('status').textContent);
    process.stderr.write(`page ${state}: ${status}\n${messages.join('\n')}\n`);
    process.exitCode = 1;
  } else {
    process.stdout.write(await page.evaluate(() => document.getElementById('result').textContent));
  }
} finally {
  await browser.close();
}
