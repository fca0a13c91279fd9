import os
import random
import subprocess
from urllib.parse import urlparse

import requests
from flask import Flask, abort, redirect, render_template_string, request, send_from_directory, url_for
from markupsafe import escape
from werkzeug.utils import secure_filename

app = Flask(__name__)
UPLOAD_DIR = "/srv/uploads"
ALLOWED_HOSTS = {"api.example.com"}


@app.route("/hello")
def hello():
    name = request.args.get("name", "")
    return f"<p>Hello, {escape(name)}!</p>"


@app.route("/page")
def page():
    name = request.args.get("name", "")
    return render_template_string("<p>Hello, {{ name }}!</p>", name=name)


@app.route("/download/<path:filename>")
def download(filename):
    return send_from_directory(UPLOAD_DIR, filename)


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["file"]
    name = secure_filename(f.filename)
    f.save(os.path.join(UPLOAD_DIR, name))
    return redirect(url_for("hello"))


@app.route("/fetch")
def fetch():
    url = request.args.get("url", "")
    host = urlparse(url).hostname
    if host not in ALLOWED_HOSTS:
        abort(400)
    r = requests.get(url, timeout=5)
    return r.text


@app.route("/next")
def next_page():
    target = request.args.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("hello")
    return redirect(target)


def pick_color():
    return random.choice(["red", "green", "blue"])


def ping(host: str) -> int:
    return subprocess.call(["ping", "-c", "1", host], shell=False)


def read_upload(name: str) -> bytes:
    path = os.path.join(UPLOAD_DIR, os.path.basename(name))
    with open(path, "rb") as f:
        return f.read()


if __name__ == "__main__":
    app.run(debug=False)
