import openai


def test_openai_sdk_through_gateway(fake_openai, make_gateway):
    gw = make_gateway(
        {
            "backends": {
                "up": {
                    "kind": "openai",
                    "base_url": fake_openai.url + "/v1",
                    "model": "m1",
                    "api_key": "sk-upstream-secret-0123456789",
                }
            },
            "routes": {"bot": {"baseline": "up"}},
        }
    )
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)
    answer = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content == "echo: hello there"
    stream = client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "hello there"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: hello there"
