"""POST /v1/caption over the tiny captioner, in process through the real factory, lifespan and caption engine:
real PNG and JPEG bytes in, the offline decoder's caption out; every bad upload a 4xx, and the server keeps going."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from beem.captioning.caption_bundle import load_caption_bundle
from beem.captioning.captioner import image_tensor
from beem.captioning.early_exit_decoding import decode_greedy
from beem.captioning.scene_generator import SceneItem, render
from service.settings import ServerSettings
from tests.api.conftest import ready_client

MAX_PIXELS = 640 * 480


@pytest.fixture(scope="module")
def caption_client(tiny_caption_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(
        ServerSettings(bundle=tiny_caption_bundle_dir, max_body_bytes=200_000, max_image_pixels=MAX_PIXELS)
    )


def scene(seed: int) -> Image.Image:
    """A real scene picture as the builder renders them (one tinted block per item)."""
    pictures = [np.full((28, 28), 60 + (seed * 37 + i * 11) % 190, dtype=np.uint8) for i in range(2)]
    items = [SceneItem(seed % 10, "red", "large", 0), SceneItem((seed + 3) % 10, "blue", "small", 3)]
    return render(items, pictures)


def encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def test_multipart_and_base64_give_the_offline_decoders_caption(caption_client: TestClient,
                                                                tiny_caption_bundle_dir: Path) -> None:  # fmt: skip
    png = encoded(scene(1))
    by_upload = caption_client.post("/v1/caption", files={"image": ("scene.png", png, "image/png")})
    by_json = caption_client.post("/v1/caption", json={"image": base64.b64encode(png).decode()})
    assert by_upload.status_code == by_json.status_code == 200, by_upload.text
    answer = by_upload.json()
    assert answer == by_json.json()
    assert answer["policy"] == "beem-a" and answer["num_layers"] == 3
    assert len(answer["tokens"]) == len(answer["token_exit_layers"]) >= 1
    assert answer["mean_exit_layer"] == pytest.approx(sum(answer["token_exit_layers"]) / len(answer["tokens"]))
    bundle = load_caption_bundle(tiny_caption_bundle_dir)
    with Image.open(io.BytesIO(png)) as image:
        features = bundle.captioner.image_features(image_tensor(image)[None])
    offline = decode_greedy(bundle.captioner.decoder, features, bundle.policies["beem-a"], bundle.vocabulary.start_id,
                            bundle.vocabulary.end_id, bundle.max_length)  # fmt: skip
    assert answer["token_exit_layers"] == offline.exit_layers
    assert answer["tokens"] == [bundle.vocabulary.words[t] for t in offline.tokens]
    assert answer["caption"] == bundle.vocabulary.decode(offline.tokens)


def test_policy_choice_and_jpeg(caption_client: TestClient) -> None:
    jpeg = encoded(scene(2), "JPEG")
    full = caption_client.post(
        "/v1/caption", json={"image": base64.b64encode(jpeg).decode(), "policy": {"name": "full"}}
    )
    assert full.status_code == 200, full.text
    assert set(full.json()["token_exit_layers"]) == {3} and full.json()["policy"] == "full"
    static = caption_client.post(
        "/v1/caption", files={"image": ("s.jpg", jpeg, "image/jpeg")},
        data={"policy": json.dumps({"name": "static", "layer": 1})},
    )  # fmt: skip
    assert static.status_code == 200, static.text
    assert set(static.json()["token_exit_layers"]) == {1}
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    assert (
        caption_client.post("/v1/caption", json={"image": data_url, "policy": {"name": "full"}}).json() == full.json()
    )


def test_metrics_carry_the_caption_task(caption_client: TestClient) -> None:
    caption_client.post("/v1/caption", files={"image": ("a.png", encoded(scene(3)), "image/png")})
    text = caption_client.get("/metrics").text
    tiny = 'model="tiny-captioner"'
    assert f'beem_exit_layer_count{{{tiny},policy="beem-a",task="caption",version="1"}}' in text
    assert f'beem_layers_computed_total{{{tiny},task="caption",version="1"}}' in text
    assert f'beem_model_info{{{tiny},name="tiny-captioner",task="caption",version="1"}} 1.0' in text
    assert f'beem_requests_total{{{tiny},policy="beem-a",route="/v1/caption",status="200"}}' in text
    models = caption_client.get("/v1/models").json()["data"][0]
    assert models["task"] == "caption" and models["num_layers"] == 3


def _gif() -> bytes:
    return encoded(Image.new("RGB", (20, 20), (1, 2, 3)), "GIF")


def _truncated_png() -> bytes:
    png = encoded(Image.effect_noise((64, 64), 50).convert("RGB"))
    return png[: len(png) // 2]


BAD_UPLOADS = [
    (b"", 422, "empty"),
    (b"just some text, not a picture", 415, "not a PNG or JPEG"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, 422, "damaged or truncated"),
    (_gif(), 415, "GIF is not accepted"),
    (_truncated_png(), 422, "damaged or truncated"),
    (encoded(Image.new("L", (800, 600))), 413, "800x600 pixels; the limit is 307200"),
]


@pytest.mark.parametrize(("content", "status", "says"), BAD_UPLOADS,
                         ids=["empty", "text", "png-garbage", "gif", "truncated", "too-many-pixels"])  # fmt: skip
def test_bad_uploads_get_a_4xx_with_a_reason(
    caption_client: TestClient, content: bytes, status: int, says: str
) -> None:
    for response in (
        caption_client.post("/v1/caption", files={"image": ("x.png", content, "image/png")}),
        caption_client.post("/v1/caption", json={"image": base64.b64encode(content).decode()}),
    ):
        assert response.status_code == status, response.text
        assert says in response.json()["error"]
    assert (
        caption_client.post("/v1/caption", files={"image": ("ok.png", encoded(scene(4)), "image/png")}).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"json": {"image": "not base64 !!"}}, 422, "not valid base64"),
        ({"json": {"picture": "AAAA"}}, 422, "image"),
        ({"json": {"image": "AAAA", "policy": {"name": "nope"}}}, 422, "policy.name"),
        ({"json": {"image": "AAAA", "policy": {"name": "max-prob", "threshold": 3}}}, 422, "less than or equal to 1"),
        ({"files": {"file": ("x.png", b"123", "image/png")}}, 422, "file part named 'image'"),
        ({"files": {"image": ("x.png", b"123", "image/png")}, "data": {"policy": "{not json"}}, 422, "policy"),
        ({"content": b"\x89PNG", "headers": {"content-type": "image/png"}}, 415, "multipart/form-data"),
        ({"content": b"{}", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, ""),
        ({"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}, 413, "request body over"),
    ],
    ids=[
        "base64",
        "field",
        "policy-name",
        "threshold",
        "no-image-part",
        "policy-json",
        "content-type",
        "broken-multipart",
        "body-size",
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(caption_client: TestClient, kwargs: dict[str, object], status: int,
                                              says: str) -> None:  # fmt: skip
    response = caption_client.post("/v1/caption", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "error_type"}
    assert says in response.json()["error"]


def test_classification_routes_are_not_served_by_a_captioner(caption_client: TestClient) -> None:
    response = caption_client.post("/v1/classify", json={"inputs": "a text"})
    assert response.status_code == 404
    assert "error" in response.json()
