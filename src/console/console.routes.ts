import path from 'node:path';
import { fileURLToPath } from 'node:url';
import express, { Router } from 'express';
import QRCode from 'qrcode';
import { badRequest } from '../http/errors.js';

/** The longest text we draw as a QR code (a BOLT11 invoice with a long memo is under 1 500 characters). */
const QR_MAX_CHARS = 2_000;

/**
 * The browser console at `/`: static files from `public/` (plain ES modules, no build step, no CDN) and the QR
 * codes of its invoices, drawn here as SVG by the `qrcode` package so the page needs no library of its own.
 */
export function consoleRoutes(): Router {
  const r = Router();
  r.get('/console/qr.svg', async (req, res) => {
    const data = typeof req.query.data === 'string' ? req.query.data.trim() : '';
    if (!data || data.length > QR_MAX_CHARS) throw badRequest(`data must be 1–${QR_MAX_CHARS} characters`);
    // A BOLT11 invoice is case-insensitive; in upper case it fits QR's denser alphanumeric mode (wallets scan both).
    const text = /^ln[a-z0-9]+$/i.test(data) ? data.toUpperCase() : data;
    const svg = await QRCode.toString(text, { type: 'svg', errorCorrectionLevel: 'M', margin: 2, color: { dark: '#0f172aff', light: '#ffffffff' } });
    res.setHeader('Content-Type', 'image/svg+xml; charset=utf-8');
    // The same text always draws the same code.
    res.setHeader('Cache-Control', 'public, max-age=86400, immutable');
    res.send(svg);
  });
  r.use(express.static(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../public'), { index: 'index.html', maxAge: 0 }));
  return r;
}
