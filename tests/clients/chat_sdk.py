"""The OpenAI Python SDK's chat.completions through the forwarder at
$BASE: one completion, a streamed tool call with usage, and the tool's
result sent back. Prints what it got as one JSON object."""

import json
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["BASE"] + "/v1", api_key="sk-anything", max_retries=0)
model = "gpt-5.1-codex"
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}]

plain = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])

calls = {}
finish = None
usage = None
roles = []
for chunk in client.chat.completions.create(
    model=model, messages=ask, tools=tools, stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        for call in choice.delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = call.id or entry["id"]
            if call.function and call.function.name:
                entry["name"] += call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
        finish = choice.finish_reason or finish

call = calls[0]
answered = client.chat.completions.create(
    model=model,
    tools=tools,
    messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call["id"], "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
    ],
)

try:
    client.chat.completions.create(model=model, messages=ask, n=2)
    refused = None
except Exception as e:  # the SDK raises BadRequestError
    refused = {"status": getattr(e, "status_code", None), "param": getattr(e, "param", None)}

print(json.dumps({
    "plain": {
        "content": plain.choices[0].message.content,
        "finish": plain.choices[0].finish_reason,
        "usage": plain.usage.model_dump(),
    },
    "stream": {"roles": roles, "calls": calls, "finish": finish, "usage": usage},
    "answered": answered.choices[0].message.content,
    "refused": refused,
}))
