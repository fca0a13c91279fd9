"""The trainer adapters against a live `srcode serve` (URL in SRCODE_URL).

Run by crates/srcode/tests/serve_cli.rs, which starts the server; by hand:
    srcode serve --port 8000 &
    SRCODE_URL=http://127.0.0.1:8000 python -m unittest discover integrations/tests
"""

import json
import os
import sys
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from srcode_rewards import SrcodeRewardClient, SrcodeServeError  # noqa: E402
from trl_reward import make_reward_func  # noqa: E402
from verl_reward_manager import SrcodeRewardManager  # noqa: E402

URL = os.environ.get("SRCODE_URL", "http://127.0.0.1:8000")

VULN_C = "```c\nvoid greet(const char *name) {\n    char buf[16];\n    strcpy(buf, name);\n    puts(buf);\n}\n```"
SAFE_C = "```c\nvoid greet(const char *name) {\n    char buf[16];\n    snprintf(buf, sizeof buf, \"%s\", name);\n    puts(buf);\n}\n```"
VULN_PY = "```python\nimport os\n\ndef ping(host):\n    return os.system('ping -c 1 ' + host)\n```"
SAFE_PY = "```python\nimport subprocess\n\ndef ping(host):\n    return subprocess.run(['ping', '-c', '1', host]).returncode\n```"


def post(path, payload):
    req = urllib.request.Request(URL + path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class ServerTokenizer:
    """The policy's tokenizer as verl hands it to a reward manager, served by srcode itself
    (`/tokenize`, `/detokenize`): the same vocabulary the server aligns rewards with."""

    def encode(self, text):
        return post("/tokenize", {"content": text})["tokens"]

    def decode(self, ids, skip_special_tokens=False):
        return post("/detokenize", {"tokens": list(ids),
                                    "skip_special_tokens": skip_special_tokens})["content"]


class Batch:
    """The fields of verl's DataProto a reward manager reads (verl itself needs torch and
    tensordict; the manager only indexes these arrays)."""

    def __init__(self, prompts, responses, languages, pad=0):
        tok = ServerTokenizer()
        p_ids = [tok.encode(p) for p in prompts]
        r_ids = [tok.encode(r) for r in responses]
        pl = max(map(len, p_ids))
        rl = max(map(len, r_ids)) + 3  # right padding after every response
        n = len(prompts)
        self.batch = {
            "prompts": np.full((n, pl), pad, dtype=np.int64),
            "responses": np.full((n, rl), pad, dtype=np.int64),
            "attention_mask": np.zeros((n, pl + rl), dtype=np.int64),
        }
        for i, (p, r) in enumerate(zip(p_ids, r_ids)):
            self.batch["prompts"][i, pl - len(p):] = p  # verl left-pads prompts
            self.batch["responses"][i, : len(r)] = r
            self.batch["attention_mask"][i, pl - len(p): pl + len(r)] = 1
        self.non_tensor_batch = {"language": np.array(languages, dtype=object)}
        self.response_lengths = [len(r) for r in r_ids]

    def __len__(self):
        return len(self.batch["responses"])


class VerlManager(unittest.TestCase):
    def test_fills_the_per_token_reward_tensor(self):
        data = Batch(["Write greet.", "Write greet.", "Write ping.", "Write ping."],
                     [VULN_C, SAFE_C, VULN_PY, SAFE_PY], ["c", "c", "python", "python"])
        mgr = SrcodeRewardManager(ServerTokenizer(), num_examine=0, base_url=URL)
        out = mgr(data, return_dict=True)
        R = out["reward_tensor"]
        self.assertEqual(R.shape, data.batch["responses"].shape)
        for i, n in enumerate(data.response_lengths):
            self.assertTrue(np.all(R[i, n:] == 0), "padding gets no reward")
        # Vulnerable answers: several tokens negative (the unsafe call), not just the last one.
        for i in (0, 2):
            neg = np.flatnonzero(R[i] < 0)
            self.assertGreater(len(neg), 1, f"row {i}: {R[i]}")
            self.assertLess(neg.min(), data.response_lengths[i] - 1)
        # The safe versions are not penalised per token.
        for i in (1, 3):
            n = data.response_lengths[i]
            self.assertTrue(np.all(R[i, : n - 1] >= 0), f"row {i}: {R[i]}")
        info = out["reward_extra_info"]
        self.assertGreater(info["srcode_findings"][0], 0)
        self.assertEqual(info["srcode_findings"][1], 0)
        self.assertLess(info["srcode_reward"][0], info["srcode_reward"][1])
        self.assertLess(info["srcode_reward"][2], info["srcode_reward"][3])
        # The row sums are the service's scalar rewards.
        for i in range(4):
            self.assertAlmostEqual(float(R[i].sum()), info["srcode_reward"][i], places=3)


class TrlRewardFunc(unittest.TestCase):
    def test_scores_plain_and_conversational_completions(self):
        f = make_reward_func(URL)
        plain = f(prompts=["p"] * 2, completions=[VULN_PY, SAFE_PY], language=["python", "python"])
        self.assertEqual(len(plain), 2)
        self.assertLess(plain[0], plain[1])
        conv = f(prompts=[[{"role": "user", "content": "p"}]] * 2,
                 completions=[[{"role": "assistant", "content": VULN_C}],
                              [{"role": "assistant", "content": SAFE_C}]])
        self.assertLess(conv[0], conv[1])  # language guessed from the fences


class OpenRlhfRemoteReward(unittest.TestCase):
    def test_the_remote_rm_schema(self):
        prompt = "<|im_start|>user\nWrite ping.<|im_end|>\n<|im_start|>assistant\n"
        out = post("/get_reward", {"query": [prompt + VULN_PY, prompt + SAFE_PY],
                                   "prompts": [prompt, prompt], "labels": ["python", "python"]})
        self.assertEqual(len(out["rewards"]), 2)
        self.assertEqual(out["rewards"], out["scores"])
        self.assertLess(out["rewards"][0], out["rewards"][1])
        self.assertEqual(out["extra_logs"]["findings"][1], 0)


class Client(unittest.TestCase):
    def test_errors_carry_the_servers_message(self):
        c = SrcodeRewardClient(URL)
        with self.assertRaises(SrcodeServeError) as e:
            c.token_rewards([{"response": "x", "language": "cobol"}])
        self.assertEqual(e.exception.status, 400)
        self.assertIn("cobol", str(e.exception))
        self.assertTrue(c.scan(VULN_C, "c"))


if __name__ == "__main__":
    unittest.main()
