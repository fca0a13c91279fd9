import hashlib
import hmac
import json
import os
import secrets
import shlex
import sqlite3
import subprocess
import tempfile
import ast

import yaml


def get_user(conn: sqlite3.Connection, user_id: int):
    cur = conn.cursor()
    cur.execute("SELECT id, name FROM users WHERE id = ?", (user_id,))
    return cur.fetchone()


def find_users(conn, name):
    query = "SELECT id FROM users WHERE name = %s"
    with conn.cursor() as cur:
        cur.execute(query, (name,))
        return cur.fetchall()


def list_dir(path: str) -> str:
    result = subprocess.run(["ls", "-l", path], capture_output=True, text=True, check=True)
    return result.stdout


def quoted(cmd_arg: str) -> str:
    return "echo " + shlex.quote(cmd_arg)


def load_config(path: str):
    with open(path, "r", encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_json(text: str):
    return json.loads(text)


def new_token() -> str:
    return secrets.token_hex(32)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(sig: bytes, key: bytes, msg: bytes) -> bool:
    expected = hmac.new(key, msg, hashlib.sha256).digest()
    return hmac.compare_digest(expected, sig)


def safe_join(base: str, name: str) -> str:
    base = os.path.realpath(base)
    target = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, target]) != base:
        raise ValueError("path escapes base directory")
    return target


def read_file_in(base: str, name: str) -> bytes:
    path = safe_join(base, name)
    with open(path, "rb") as f:
        return f.read()


def write_private(data: bytes) -> str:
    fd, path = tempfile.mkstemp()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def parse_literal(text: str):
    return ast.literal_eval(text)


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)


def password_from_env() -> str:
    password = os.environ.get("DB_PASSWORD", "")
    return password
