"""`deepstack-serve`'s request checks and stop-string filter, without a server (the HTTP answers are in
test_serving.py)."""

import pytest

from deepstack_hf.integrations.serving.chat_request import MediaReference, parse_chat_request
from deepstack_hf.integrations.serving.errors import RequestError
from deepstack_hf.integrations.serving.responses import StopStringFilter
from deepstack_hf.integrations.serving.settings import ServerSettings

NAMES = ["tiny"]


def parse(**body):
    return parse_chat_request(body, NAMES, vocab_size=512)


def test_a_full_request_is_read_into_template_messages_and_media_in_order():
    request = parse(
        model="tiny",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": "http://a/1.png", "detail": "auto"}},
                {"type": "video_url", "video_url": {"url": "file:///v.mp4"}},
                {"type": "image_url", "image_url": "data:image/png;base64,AA=="},
            ]},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Again"},
        ],
        max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=3, stop="END", logit_bias={"2": -100},
        stream=True, stream_options={"include_usage": True}, n=1, user="someone",
    )  # fmt: skip
    assert request.messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "video"}, {"type": "image"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]
    assert request.images == [
        MediaReference("image", "http://a/1.png", "messages[1].content[1].image_url.url"),
        MediaReference("image", "data:image/png;base64,AA==", "messages[1].content[3].image_url.url"),
    ]
    assert request.videos == [MediaReference("video", "file:///v.mp4", "messages[1].content[2].video_url.url")]
    assert (request.max_tokens, request.temperature, request.top_p, request.seed) == (7, 0.5, 0.9, 3)
    assert request.stop == ("END",) and request.logit_bias == {2: -100.0}
    assert request.stream and request.include_usage


def test_defaults_leave_generation_to_the_model():
    request = parse(messages=[{"role": "user", "content": "Hi"}])
    assert (request.max_tokens, request.temperature, request.top_p, request.seed, request.stream) == (None,) * 4 + (
        False,
    )


@pytest.mark.parametrize("name, value", [("top_k", 3), ("best_of", 2), ("echo", True), ("guided_json", {})])
def test_unknown_fields_are_refused_by_name(name, value):
    with pytest.raises(RequestError, match=f"Unknown field '{name}'") as error:
        parse(messages=[{"role": "user", "content": "Hi"}], **{name: value})
    assert error.value.status == 400 and error.value.param == f"'{name}'"


def test_unknown_model_is_404():
    with pytest.raises(RequestError, match="does not exist; this server serves 'tiny'") as error:
        parse(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])
    assert error.value.status == 404 and error.value.body()["error"]["type"] == "not_found_error"


def cut(text, stops, pieces):
    """Feed `text` in `pieces`-sized parts; what comes out."""
    filter_ = StopStringFilter(stops)
    out = "".join(filter_.feed(text[i : i + pieces]) for i in range(0, len(text), pieces))
    return out + ("" if filter_.stopped else filter_.flush()), filter_.stopped


@pytest.mark.parametrize("pieces", [1, 2, 3, 100])
def test_stop_strings_cut_streamed_text_as_they_cut_the_whole(pieces):
    text = "the cat sat. THE END and more"
    for stops in [("END",), ("sat", "cat"), ("nothing",), ("E", "THE END"), ("more",)]:
        found = [(text.find(stop) + len(stop), text.find(stop)) for stop in stops if stop in text]
        want = text[: min(found)[1]] if found else text  # cut at the stop string complete first
        assert cut(text, stops, pieces) == (want, bool(found)), (stops, pieces)


def test_settings_refuse_nonsense(tmp_path):
    with pytest.raises(ValueError, match="max_media_bytes must be positive"):
        ServerSettings("m", max_media_bytes=0)
    with pytest.raises(ValueError, match="is not a folder"):
        ServerSettings("m", allowed_local_media_path=tmp_path / "missing")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert ServerSettings("m", allowed_local_media_path=link).allowed_local_media_path == tmp_path.resolve()
