"""`deepstack-serve`: an OpenAI-compatible chat-completions server for DeepStack, the package's own small FastAPI app.

Built on Transformers' public surface only (the processor and its chat template, `model.generate`,
`AsyncTextIteratorStreamer`, `StoppingCriteria`), so it runs the same on every Transformers release the package
allows. The pieces, in the order a request meets them:

* `settings.ServerSettings`: the limits and policies (media sources, sizes, queue, context);
* `chat_request.parse_chat_request`: the request body checked field by field (taken or refused by name);
* `media.MediaReader`: images and videos read off the event loop within deadlines and byte limits, images'
  headers checked before decoding;
* `generation`: one generation at a time in a worker thread behind a bounded queue, cancelled when its client
  disconnects;
* `responses`: OpenAI's completion and chunk objects, server-sent events, stop strings;
* `app.build_app`: the routes; `cli`: the `deepstack-serve` command (Uvicorn).

Needs the `serving` extra (`pip install -e ".[serving]"` in a checkout: FastAPI, Uvicorn). docs/serving.md.
"""
