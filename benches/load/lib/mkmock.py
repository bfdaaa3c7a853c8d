#!/usr/bin/env python3
"""Generate the nginx config for the mock LLM upstream (stdlib only).

Usage: mkmock.py OUT_DIR [PORT]

Writes OUT_DIR/nginx.conf (+ OUT_DIR/bodies/* copies for inspection).
Bodies are static files served from the page cache (sendfile, Content-Length,
one write).  Routes (POST):

  /v1/chat/completions         "stream": true in the body -> OpenAI SSE (21 chunk
                               events incl. finish + usage chunk + [DONE], ~6.8 KB),
                               else OpenAI chat.completion JSON (~710 B, with usage)
  /v1/messages                 same for Anthropic: SSE event stream or message JSON
  /stream/v1/chat/completions  always SSE      /json/v1/chat/completions  always JSON
  /stream/v1/messages          always SSE      /json/v1/messages          always JSON
  /v1/responses                same for OpenAI's Responses API: its named event
                               stream (created, in_progress, output item/part
                               events, 19 text deltas, completed) or response JSON
  /v1beta/models/M:streamGenerateContent   Gemini `alt=sse` stream (19 chunks,
                               CRLF, each repeating usageMetadata; the last with
                               finishReason)
  GET /health                  "ok"
  GET /_mock_status            nginx stub_status (the harness reads its request counter)

So a gateway only needs the base URL http://127.0.0.1:PORT/v1 -- it streams iff
the client asked for it, exactly like the real APIs.  The body sniffing uses the
echo module (echo_read_request_body + echo_exec) and a `map` on $request_body.
"""
import json
import os
import sys

CREATED = 1741570283
MODEL = "gpt-4o-2024-08-06"
FP = "fp_f9f4fb6dbf"
CID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"

ANSWER_TOKENS = [
    "The", " capital", " of", " France", " is", " Paris", ".", " It", " sits",
    " on", " the", " Seine", " and", " is", " known", " for", " the", " Louvre", ".",
]
ANSWER = "".join(ANSWER_TOKENS)
USAGE = {
    "prompt_tokens": 26,
    "completion_tokens": len(ANSWER_TOKENS),
    "total_tokens": 26 + len(ANSWER_TOKENS),
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def dumps(o):
    return json.dumps(o, separators=(",", ":"), ensure_ascii=True)


def openai_json():
    return dumps({
        "id": CID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER + " Ask me anything else about French geography.",
                        "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": USAGE,
        "service_tier": "default",
        "system_fingerprint": FP,
    }) + "\n"


def openai_sse():
    def chunk(delta, finish=None, usage_none=True):
        c = {"id": CID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
             "service_tier": "default", "system_fingerprint": FP,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage_none:
            c["usage"] = None
        return "data: " + dumps(c) + "\n\n"

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]      # 1
    out += [chunk({"content": t}) for t in ANSWER_TOKENS]                     # 19 -> 20 chunks
    out.append(chunk({}, finish="stop"))                                     # 21 (finish)
    usage = {"id": CID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
             "service_tier": "default", "system_fingerprint": FP, "choices": [], "usage": USAGE}
    out.append("data: " + dumps(usage) + "\n\n")                             # usage chunk
    out.append("data: [DONE]\n\n")
    return "".join(out)


def anthropic_json():
    return dumps({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": ANSWER}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 26, "output_tokens": len(ANSWER_TOKENS),
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }) + "\n"


def anthropic_sse():
    def ev(name, data):
        return "event: " + name + "\ndata: " + dumps(data) + "\n\n"

    out = [ev("message_start", {"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [],
        "model": "claude-sonnet-4-20250514", "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 26, "output_tokens": 1}}})]
    out.append(ev("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}))
    out.append(ev("ping", {"type": "ping"}))
    for t in ANSWER_TOKENS:
        out.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": t}}))
    out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(ev("message_delta", {"type": "message_delta",
                                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                    "usage": {"output_tokens": len(ANSWER_TOKENS)}}))
    out.append(ev("message_stop", {"type": "message_stop"}))
    return "".join(out)


RESP_ID = "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654"
MSG_ID = "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654"
RESP_MODEL = "gpt-4.1-2025-04-14"


def responses_object(status, output, usage):
    return {"id": RESP_ID, "object": "response", "created_at": CREATED, "status": status,
            "background": False, "error": None, "incomplete_details": None, "instructions": None,
            "max_output_tokens": None, "model": RESP_MODEL, "output": output,
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
            "usage": usage, "user": None, "metadata": {}}


def responses_message(status, text):
    return {"id": MSG_ID, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}


RESPONSES_USAGE = {"input_tokens": 26, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": len(ANSWER_TOKENS),
                   "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 26 + len(ANSWER_TOKENS)}


def responses_json():
    return dumps(responses_object("completed", [responses_message("completed", ANSWER)],
                                  RESPONSES_USAGE)) + "\n"


def responses_sse():
    seq = iter(range(1000))

    def ev(name, data):
        return "event: " + name + "\ndata: " + dumps(dict({"type": name, "sequence_number": next(seq)}, **data)) + "\n\n"

    part = {"item_id": MSG_ID, "output_index": 0, "content_index": 0}
    out = [ev("response.created", {"response": responses_object("in_progress", [], None)}),
           ev("response.in_progress", {"response": responses_object("in_progress", [], None)}),
           ev("response.output_item.added", {"output_index": 0, "item": responses_message("in_progress", "")}),
           ev("response.content_part.added", dict(part, part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""}))]
    out += [ev("response.output_text.delta", dict(part, delta=t, logprobs=[])) for t in ANSWER_TOKENS]
    out.append(ev("response.output_text.done", dict(part, text=ANSWER, logprobs=[])))
    out.append(ev("response.content_part.done", dict(part, part={"type": "output_text", "annotations": [], "logprobs": [], "text": ANSWER})))
    out.append(ev("response.output_item.done", {"output_index": 0, "item": responses_message("completed", ANSWER)}))
    out.append(ev("response.completed", {"response": responses_object(
        "completed", [responses_message("completed", ANSWER)], RESPONSES_USAGE)}))
    return "".join(out)


def gemini_sse():
    out = []
    for i, t in enumerate(ANSWER_TOKENS):
        cand = {"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}
        if i + 1 == len(ANSWER_TOKENS):
            cand["finishReason"] = "STOP"
        chunk = {"candidates": [cand],
                 "usageMetadata": {"promptTokenCount": 26, "candidatesTokenCount": i + 1,
                                   "totalTokenCount": 27 + i,
                                   "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 26}]},
                 "modelVersion": "gemini-2.5-flash", "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"}
        out.append("data: " + dumps(chunk) + "\r\n\r\n")
    return "".join(out)


def main():
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        # An option here is not an output directory (a `--help` made one).
        sys.exit(__doc__.split("\n\n")[1])
    out_dir = os.path.abspath(sys.argv[1])
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 18080
    os.makedirs(os.path.join(out_dir, "bodies"), exist_ok=True)
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        os.makedirs(os.path.join(out_dir, "tmp", d), exist_ok=True)
    bodies = {
        "openai.json": openai_json(),
        "openai.sse": openai_sse(),
        "anthropic.json": anthropic_json(),
        "anthropic.sse": anthropic_sse(),
        "responses.json": responses_json(),
        "responses.sse": responses_sse(),
        "gemini.sse": gemini_sse(),
    }
    for name, b in bodies.items():
        with open(os.path.join(out_dir, "bodies", name), "w") as f:
            f.write(b)

    bdir = out_dir + "/bodies"
    t = out_dir + "/tmp"

    def fixed(path, fname):
        # always the same body, whatever the request says
        return (f"        location = {path} {{\n"
                f"            echo_read_request_body;\n"
                f"            echo_exec /_mock/{fname};\n"
                f"        }}\n")

    def sniff(path, api):
        # read the (small, in-memory) body, pick JSON or SSE from "stream": true
        return (f"        location = {path} {{\n"
                f"            echo_read_request_body;\n"
                f"            echo_exec /_mock/{api}.$mock_kind;\n"
                f"        }}\n")

    conf = f"""# generated by benches/load/lib/mkmock.py -- mock LLM upstream
# needs the echo module (Debian: libnginx-mod-http-echo, pulled in by nginx-light)
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
pid {out_dir}/nginx.pid;
error_log {out_dir}/error.log warn;
events {{
    worker_connections 8192;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    client_body_buffer_size 64k;
    client_body_in_single_buffer on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    sendfile on;
    open_file_cache max=16 inactive=3600s;
    open_file_cache_valid 3600s;
    etag off;
    server_tokens off;
    # "stream": true anywhere in the request body -> SSE, else JSON (like the real APIs)
    map $request_body $mock_kind {{
        "~\\"stream\\"\\s*:\\s*true" sse;
        default json;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{sniff('/v1/chat/completions', 'openai')}
{sniff('/v1/messages', 'anthropic')}
{sniff('/v1/responses', 'responses')}
        location ~ ^/v1beta/models/[^/:]+:streamGenerateContent$ {{
            echo_read_request_body;
            echo_exec /_mock/gemini.sse;
        }}
{fixed('/stream/v1/chat/completions', 'openai.sse')}
{fixed('/json/v1/chat/completions', 'openai.json')}
{fixed('/stream/v1/messages', 'anthropic.sse')}
{fixed('/json/v1/messages', 'anthropic.json')}
        # bodies; POST to a static file is a 405, error_page turns it into an
        # internal GET of the same file -> 200
        location /_mock/ {{
            internal;
            alias {bdir}/;
            types {{ application/json json; text/event-stream sse; }}
            add_header Cache-Control no-cache;
            error_page 405 =200 $uri;
        }}
        location = /health {{ default_type text/plain; return 200 'ok\\n'; }}
        # request counter (nginx stub_status): the harness counts what a gateway forwarded
        location = /_mock_status {{ stub_status; }}
        location / {{ default_type application/json; return 404 '{{"error":{{"message":"mock: unknown route","type":"invalid_request_error"}}}}\\n'; }}
    }}
}}
"""
    with open(os.path.join(out_dir, "nginx.conf"), "w") as f:
        f.write(conf)
    for name, b in bodies.items():
        print(f"{name}: {len(b.encode())} bytes, {b.count('data: ')} data: lines")


if __name__ == "__main__":
    main()
