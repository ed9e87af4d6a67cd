"""`deepstack-serve`: an OpenAI-compatible chat-completions server for DeepStack on Transformers' `transformers serve`.

`transformers serve` (FastAPI app, request handlers, generation managers, model cache) does the serving; this
package only teaches it what it cannot know about a model type outside Transformers:

* `model_manager.DeepStackModelManager`: load DeepStack through `AutoModelForImageTextToText` and treat it as an
  image-text-to-text model (a converted repo with or without its module files: the package's classes run);
* `chat_completion.DeepStackChatCompletionHandler`: read every `image_url` once, and answer a request the model
  cannot take (an unreadable image, more image tokens than the context holds, a refused input) with HTTP 400;
* `cli`: the app for one pinned model and the `deepstack-serve` command.

Needs the `serving` extra (`pip install -e ".[serving]"` in a checkout: FastAPI, Uvicorn, the OpenAI types).
"""
