"""The official `openai` package against a live `srcode serve` with a model (SRCODE_URL)."""

import os
import unittest

import openai

URL = os.environ.get("SRCODE_URL", "http://127.0.0.1:8000")


class OpenAiClient(unittest.TestCase):
    def setUp(self):
        self.client = openai.OpenAI(base_url=URL + "/v1", api_key=os.environ.get("SRCODE_API_KEY", "none"))
        self.model = self.client.models.list().data[0].id

    def test_chat_completion(self):
        r = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": "Write a C function that returns the larger of two ints."}],
            max_tokens=48, temperature=0)
        c = r.choices[0]
        self.assertEqual(c.message.role, "assistant")
        self.assertTrue(c.message.content.strip())
        self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.completion_tokens <= 48, True)
        self.assertGreater(r.usage.prompt_tokens, 0)

    def test_streamed_chat_equals_the_plain_one(self):
        msgs = [{"role": "user", "content": "Write a Python function that reverses a string."}]
        plain = self.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=32,
                                                    temperature=0)
        parts, finish, usage = [], None, None
        for chunk in self.client.chat.completions.create(
                model=self.model, messages=msgs, max_tokens=32, temperature=0, stream=True,
                stream_options={"include_usage": True}):
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                if ch.delta.content:
                    parts.append(ch.delta.content)
                if ch.finish_reason:
                    finish = ch.finish_reason
        self.assertGreater(len(parts), 1, "the answer arrives in pieces")
        self.assertEqual("".join(parts), plain.choices[0].message.content)
        self.assertEqual(finish, plain.choices[0].finish_reason)
        self.assertEqual(usage.completion_tokens, plain.usage.completion_tokens)

    def test_completions_with_stop_and_logprobs(self):
        r = self.client.completions.create(model=self.model, prompt="def add(a, b):\n",
                                           max_tokens=24, temperature=0, stop=["\n\n"], logprobs=1)
        c = r.choices[0]
        self.assertNotIn("\n\n", c.text)
        self.assertEqual(len(c.logprobs.tokens), len(c.logprobs.token_logprobs))
        self.assertTrue(all(lp <= 0 for lp in c.logprobs.token_logprobs))

    def test_bad_requests_raise_the_clients_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model=self.model, messages=[], max_tokens=4)
        self.assertIn("messages", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=10**9)


if __name__ == "__main__":
    unittest.main()
