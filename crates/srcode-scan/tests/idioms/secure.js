const crypto = require('crypto');
const path = require('path');
const fs = require('fs');
const { execFile } = require('child_process');
const express = require('express');
const app = express();

app.get('/hello', (req, res) => {
  const name = String(req.query.name || '');
  res.type('text/plain').send(`Hello, ${name}`);
});

app.get('/file', (req, res) => {
  const base = path.resolve('/srv/files');
  const target = path.resolve(base, String(req.query.name));
  if (!target.startsWith(base + path.sep)) {
    return res.status(400).send('bad path');
  }
  res.sendFile(target);
});

app.get('/user', async (req, res) => {
  const rows = await db.query('SELECT id, name FROM users WHERE id = $1', [req.query.id]);
  res.json(rows);
});

app.get('/ls', (req, res) => {
  execFile('ls', ['-l', String(req.query.dir)], (err, out) => {
    if (err) return res.status(500).end();
    res.type('text/plain').send(out);
  });
});

function token() {
  return crypto.randomBytes(32).toString('hex');
}

function hash(data) {
  return crypto.createHash('sha256').update(data).digest('hex');
}

function render(el, text) {
  el.textContent = text;
}

function parse(text) {
  return JSON.parse(text);
}

app.get('/next', (req, res) => {
  const next = String(req.query.next || '/');
  if (!next.startsWith('/') || next.startsWith('//')) {
    return res.redirect('/');
  }
  res.redirect(next);
});

const password = process.env.DB_PASSWORD;
module.exports = { token, hash, render, parse, password };
