"""A small client for `srcode serve`'s reward service (standard library only).

    client = SrcodeRewardClient("http://127.0.0.1:8000")
    out = client.token_rewards([{"response": text, "response_token_ids": ids, "language": "c"}])
    out[0]["token_rewards"]   # one float per id; out[0]["reward"] is the scalar total

The trainer adapters in this directory (verl, TRL; OpenRLHF needs none) are built on it.
"""

import json
import os
import urllib.error
import urllib.request

__all__ = ["SrcodeRewardClient", "SrcodeServeError"]


class SrcodeServeError(RuntimeError):
    """The server answered with an error (its JSON message is kept) or could not be reached."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class SrcodeRewardClient:
    def __init__(self, base_url=None, api_key=None, timeout=120.0, batch_size=256):
        base_url = base_url or os.environ.get("SRCODE_REWARD_URL", "http://127.0.0.1:8000")
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.api_key = api_key if api_key is not None else os.environ.get("SRCODE_API_KEY")
        self.timeout = timeout
        self.batch_size = batch_size

    def _post(self, path, payload):
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        req = urllib.request.Request(self.base_url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read())["error"]["message"]
            except Exception:  # not srcode's JSON error
                msg = str(e)
            raise SrcodeServeError(f"{path}: HTTP {e.code}: {msg}", e.code) from None
        except urllib.error.URLError as e:
            raise SrcodeServeError(f"{path}: cannot reach {self.base_url}: {e.reason}") from None

    def token_rewards(self, items):
        """Scores a list of items (`response`, optional `response_token_ids`, `language`, `pair`,
        `function_name`, `prompt`); returns one result per item, in order."""
        items = list(items)
        out = []
        for i in range(0, len(items), self.batch_size):
            out.extend(self._post("/v1/rewards/token", items[i : i + self.batch_size]))
        return out

    def scan(self, code, language=None):
        payload = {"code": code}
        if language:
            payload["language"] = language
        return self._post("/v1/scan", payload)["findings"]
