"""`/v1/chat/completions` for DeepStack: upstream's handler plus HTTP 400 for requests the model cannot take."""

from __future__ import annotations

from fastapi import HTTPException
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.image_utils import load_image


def _describe(source: str, limit: int = 80) -> str:
    return source if len(source) <= limit else source[:limit] + "..."


class DeepStackChatCompletionHandler(ChatCompletionHandler):
    """Chat completions for a server pinned to one DeepStack model (`model_manager.force_model`).

    Before anything is generated, each image (`image_url`: a URL, a data URI or a file path on the server) is
    read once, and the prompt's length (text tokens + each image's visual tokens) is checked against the model's
    context. A request that fails there, or that the processor refuses (`ValueError`), gets HTTP 400 with the
    reason; the server keeps serving.
    """

    async def handle_request(self, body: dict, request_id: str):
        try:
            return await super().handle_request(body, request_id)
        except ValueError as error:  # the processor's, the image reader's and the checks' refusals
            raise HTTPException(status_code=400, detail=str(error)) from error

    def get_processor_inputs_from_messages(self, messages: list[dict], modality) -> list[dict]:
        parsed = super().get_processor_inputs_from_messages(messages, modality)
        images = []
        for message in parsed:
            for part in message["content"] if isinstance(message["content"], list) else []:
                if part.get("type") == "image" and "url" in part:
                    part["image"] = self._read_image(part.pop("url"), len(images) + 1)
                    images.append(part["image"])
        self._check_context(parsed, images)
        return parsed

    @staticmethod
    def _read_image(source: str, number: int):
        try:
            return load_image(source, timeout=30)
        except Exception as error:  # unreachable URL, missing file, bad base64, not an image
            raise ValueError(f"Could not read image {number} ({_describe(source)}): {error}") from error

    def _check_context(self, parsed: list[dict], images: list) -> None:
        """Refuse a prompt longer than the model's context (raised as `ValueError`, i.e. HTTP 400)."""
        model_id = self.model_manager.process_model_name(self.model_manager.force_model)
        model, processor = self.model_manager.load_model_and_processor(model_id)
        context = model.config.get_text_config().max_position_embeddings
        prompt = processor.apply_chat_template(parsed, add_generation_prompt=True, tokenize=False)
        text_tokens = len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]) - len(images)
        sizes = [(image.height, image.width) for image in images]
        image_tokens = list(processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens) if images else []
        if text_tokens + sum(image_tokens) > context:
            raise ValueError(
                f"The prompt takes about {text_tokens + sum(image_tokens)} tokens ({len(images)} images: "
                f"{', '.join(map(str, image_tokens))} visual tokens; {text_tokens} text tokens), more than the "
                f"model's context of {context} tokens. Send fewer or smaller images."
            )
