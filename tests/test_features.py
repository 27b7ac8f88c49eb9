"""Layer features: sliding windows, the feature cache, TR resampling, delays, trims and the design."""

import numpy as np
import pytest
import torch
from conftest import cut_audio, write_small_dataset

from bt_utils.data.dataset import Dataset, StorySplit
from bt_utils.demo.simulation import DemoConfig, build_demo_dataset
from bt_utils.features import layers as features
from bt_utils.features.layers import (
    CACHE_VERSION,
    EDGE_SHARED,
    EDGE_SPARSE,
    FAST_STRIDE_S,
    PROTOCOL_LAYERS,
    WindowSettings,
    check_layers,
    dataset_tr_features,
    default_layers,
    extract_layer_features,
    layer_design,
    make_delays,
    plan_windows,
    response_rows_test,
    stimulus_rows,
    story_features,
    tr_features,
    zscore_per_story,
)
from bt_utils.features.layers import _edge_frames  # noqa: PLC2701 (the span and blocks edge mode builds)
from bt_utils.features.lanczos import lanczos_resample
from bt_utils.models.registry import load_encoder
from bt_utils.data.timing import trim_trs
from bt_utils.validation import DataError

SR = 16000


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine two threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Dataset:
    """A small demo dataset: stories of ~45 s of synthesised speech."""
    config = DemoConfig(n_train_stories=2, n_validation_stories=1, story_seconds=45, test_story_seconds=45,
                        n_voxels=300, n_repeats=(3, 2, 2))
    return Dataset(build_demo_dataset(tmp_path_factory.mktemp("speech") / "data", config))


@pytest.fixture(scope="module")
def noise_dataset(tmp_path_factory) -> Dataset:
    """Stories of 1 s of noise (10 frames on the 0.1-s grid), subject S01."""
    root = tmp_path_factory.mktemp("noise") / "data"
    return cut_audio(Dataset(write_small_dataset(root, {"a": 40, "b": 42, "c": 44, "t": 80})), seconds=1.0)


def _toy_audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# ----- settings and window plans -----------------------------------------------------------------


def test_window_settings_defaults_and_errors():
    reference, fast = WindowSettings(), WindowSettings("fast")
    assert (reference.stride_s, reference.frames_per_window, reference.window_samples) == (0.1, 1, 257_600)
    assert (fast.stride_s, fast.frames_per_window, fast.window_samples) == (2.0, 20, 18 * SR)
    assert fast.to_dict() == {"mode": "fast", "context_s": 16.0, "chunk_s": 0.1, "stride_s": 2.0}
    assert fast.tag == "fast-ctx16.0-chunk0.1-stride2.0" and WindowSettings("fast", context_s=16).tag == fast.tag
    with pytest.raises(ValueError, match="mode='fast'"):
        WindowSettings("reference", stride_s=2.0)
    with pytest.raises(ValueError, match="whole multiple of chunk_s"):
        WindowSettings("fast", stride_s=0.25)
    with pytest.raises(ValueError, match="mode='slow' is not valid"):
        WindowSettings("slow")
    with pytest.raises(ValueError, match="whole number of samples"):
        WindowSettings(chunk_s=1e-5)


def test_edge_settings_defaults_tag_and_errors():
    edge = WindowSettings("edge")
    assert (edge.stride_s, edge.frames_per_window, edge.span_before_s, edge.span_after_s) == (0.1, 1, 8.0, 2.0)
    assert edge.span_frames == 501  # 400 frames before the kept one, 100 after, 20 ms apart
    assert edge.tag == "edge-ctx16.0-chunk0.1-stride0.1-before8.0-after2.0"
    assert edge.to_dict() == {"mode": "edge", "context_s": 16.0, "chunk_s": 0.1, "stride_s": 0.1,
                              "span_before_s": 8.0, "span_after_s": 2.0,
                              "sparse_stride_before": None, "sparse_stride_after": None}
    sparse = WindowSettings("edge", **EDGE_SPARSE)
    assert sparse.tag == "edge-ctx16.0-chunk0.1-stride0.1-before1.5-after0.3-sparse16x128"
    assert (sparse.to_dict()["sparse_stride_before"], sparse.to_dict()["sparse_stride_after"]) == (16, 128)
    assert WindowSettings("edge", span_before_s=8, span_after_s=2) == edge
    shared = WindowSettings("edge", **EDGE_SHARED)
    assert shared.tag == "edge-ctx16.0-chunk0.1-stride0.1-before1.5-after0.3-sparse1x16-shared23mid"
    assert shared.to_dict()["shared_every"] == 23 and "shared_every" not in sparse.to_dict()
    with pytest.raises(ValueError, match="shared_every apply to mode='edge' only"):
        WindowSettings("reference", shared_every=4)
    assert "span_before_s" not in WindowSettings().to_dict()  # reference records and cache keys are unchanged
    with pytest.raises(ValueError, match="span_after_s apply to mode='edge' only"):
        WindowSettings("reference", span_after_s=1.0)
    with pytest.raises(ValueError, match="sparse_stride_before apply to mode='edge' only"):
        WindowSettings("fast", sparse_stride_before=16)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"sparse_stride_after={bad!r} must be a whole number >= 1"):
            WindowSettings("edge", sparse_stride_after=bad)
    with pytest.raises(ValueError, match="span_before_s=0.015 must be a whole number of Whisper frames"):
        WindowSettings("edge", span_before_s=0.015)
    with pytest.raises(ValueError, match="exceeds Whisper's 30 s input"):
        WindowSettings("edge", span_before_s=20.0, span_after_s=10.0)
    with pytest.raises(ValueError, match="edge mode keeps one frame per window"):
        WindowSettings("edge", stride_s=2.0)


@pytest.mark.parametrize("settings", [WindowSettings(), WindowSettings("fast"), WindowSettings("fast", stride_s=3.0)])
def test_plan_covers_the_grid_once_with_causal_windows(settings):
    n_samples = 61 * SR + 700  # a partial chunk at the end is not used
    plan = plan_windows(n_samples, settings)
    np.testing.assert_allclose(plan.times, np.arange(1, 611) / 10)
    assert np.array_equal(np.concatenate([np.arange(a, b) for a, b in zip(plan.first, plan.stop)]), np.arange(610))
    assert plan.starts[0] == 0 and plan.ends[-1] == 610 * 1600
    assert np.all(plan.ends - plan.starts <= settings.window_samples)
    window = plan.window_of_frame
    heard = plan.grid_ends - plan.starts[window]  # past audio of each kept frame
    context = settings.window_samples - settings.stride_s * SR + settings.chunk_samples
    assert np.all((heard >= context) | (plan.starts[window] == 0))
    assert np.all(plan.grid_ends <= plan.ends[window])


def test_fast_mode_cuts_encoder_compute_tenfold():
    plan_ref, plan_fast = (plan_windows(600 * SR, WindowSettings(mode)) for mode in ("reference", "fast"))
    ratio = plan_ref.input_seconds() / plan_fast.input_seconds()
    assert ratio > 17  # (16.1 / 0.1) * 2 / 18 = 17.9 in the steady state
    assert len(plan_ref.starts) / len(plan_fast.starts) == 20  # Whisper pads every window to 30 s
    assert plan_ref.input_seconds(30.0) / plan_fast.input_seconds(30.0) == 20


# ----- extraction --------------------------------------------------------------------------------


def _authors_whisper_frame(encoder, n_samples: int) -> int:
    """The frame the authors' extraction keeps for Whisper padded to 30 s: the feature extractor's
    attention mask (one entry per 160 samples, 3,000 entries) convolved with ones shaped like conv1
    and conv2, and its last non-zero entry."""
    mask = torch.zeros(1, 1, 3000)
    mask[..., :int(np.ceil(n_samples / 160))] = 1
    for conv in (encoder.encoder.conv1, encoder.encoder.conv2):
        mask = torch.nn.functional.conv1d(mask, torch.ones(1, 1, conv.kernel_size[0]), stride=conv.stride,
                                          padding=conv.padding)
    return int(mask[0, 0].nonzero().max())


@pytest.mark.parametrize("name, native", [("tiny-wav2vec2", False), ("tiny-hubert", False),
                                          ("tiny-whisper", False), ("tiny-whisper", True)])
def test_reference_frames_equal_single_window_forward(name, native, one_thread):
    encoder = load_encoder(name, "cpu", native_length=native)
    audio = _toy_audio(2.55)
    settings = WindowSettings(context_s=1.0)
    times, features = extract_layer_features(encoder, audio, [0, 2], settings, batch_size=4, progress=False)
    np.testing.assert_allclose(times, np.arange(1, 26) / 10)  # exactly the stride times; the last 0.05 s unused
    for k in (0, 4, 10, 24):  # story start (shorter windows) and full 1.1-s windows
        end = (k + 1) * 1600
        window = torch.from_numpy(audio[None, max(0, end - settings.window_samples):end])
        with torch.no_grad():
            output = encoder(window)
        last = int(output.frame_mask[0].sum()) - 1
        if encoder.family == "whisper" and not native:
            last = _authors_whisper_frame(encoder, window.shape[1])
            assert last == int(output.frame_mask[0].sum())  # one frame after the fully real ones
        for layer in (0, 2):
            np.testing.assert_allclose(features[layer][k], output.hidden_states[layer][0, last].numpy(), atol=1e-5)


def test_fast_frames_come_from_their_window(one_thread):
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    audio = _toy_audio(5.0)
    settings = WindowSettings("fast", context_s=1.0, stride_s=1.0)
    times, features = extract_layer_features(encoder, audio, [1], settings, progress=False)
    assert len(times) == 50
    with torch.no_grad():  # window 3 spans 2.0-4.0 s and yields the frames at 3.1 .. 4.0 s
        output = encoder(torch.from_numpy(audio[None, 2 * SR:4 * SR]))
    for k in range(30, 40):
        index = int(encoder.frame_lengths(torch.tensor([(k + 1) * 1600 - 2 * SR]))[0]) - 1
        np.testing.assert_allclose(features[1][k], output.hidden_states[1][0, index].numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-hubert"])
def test_fast_mode_agrees_with_reference_on_speech(name, speech, one_thread):
    """TR-level features of both modes on 47 s of synthesised speech, 4 s of context.

    The random tiny encoders attend almost uniformly, so a frame is its local
    convolutional features plus an average over its window; fast windows move
    that window by up to 2 s and add up to 1.9 s of later audio, which changes
    features little: we expect a mean r above 0.9 (measured: 0.95-0.98). Whisper is
    not tested here: its last frame of a window is an edge representation that
    interior frames do not reproduce (see benchmarks/bench_features.py).
    """
    encoder = load_encoder(name, "cpu")
    story = speech.stories[0]
    audio, tr_times = speech.load_audio(story), speech.tr_times(story)
    reference, fast = WindowSettings(context_s=4.0), WindowSettings("fast", context_s=4.0, stride_s=2.0)
    assert plan_windows(len(audio), reference).input_seconds() / plan_windows(len(audio), fast).input_seconds() > 10
    times, ref = extract_layer_features(encoder, audio, [0, 1, 2], reference, batch_size=16, progress=False)
    fast_times, approx = extract_layer_features(encoder, audio, [0, 1, 2], fast, batch_size=16, progress=False)
    np.testing.assert_array_equal(times, fast_times)
    ref_tr, fast_tr = tr_features(times, ref, tr_times), tr_features(times, approx, tr_times)
    for layer in ref:
        r = (zscore_per_story(trim_trs(ref_tr[layer])) * zscore_per_story(trim_trs(fast_tr[layer]))).mean(axis=0)
        print(f"{name} layer {layer}: TR-level r mean {r.mean():.3f}, min {r.min():.3f}")
        assert r.mean() > 0.9


def test_edge_frames_equal_the_layers_run_on_their_span(one_thread):
    """Each kept frame equals an independent computation: the full padded forward's layer-0 states
    (convolutions and positions of all 1,500 frames), cut to the span, through the encoder's layers."""
    encoder = load_encoder("tiny-whisper", "cpu", native_length=False)
    audio = _toy_audio(2.55)
    settings = WindowSettings("edge", context_s=1.0, span_before_s=0.2, span_after_s=0.1)
    _, edge = extract_layer_features(encoder, audio, [0, 1, 2], settings, batch_size=4, progress=False)
    for k in (0, 4, 10, 24):  # shorter windows at the story start, where the span starts at frame 0
        end = (k + 1) * 1600
        window = torch.from_numpy(audio[None, max(0, end - settings.window_samples):end])
        kept = _authors_whisper_frame(encoder, window.shape[1])
        first = min(max(kept - 10, 0), 1500 - 16)
        with torch.no_grad():
            states = [encoder(window).hidden_states[0][:, first:first + 16]]
            for layer in encoder.encoder.layers:
                states.append(layer(states[-1], None))
            states[-1] = encoder.encoder.layer_norm(states[-1])
        for layer in (0, 1, 2):
            np.testing.assert_allclose(edge[layer][k], states[layer][0, kept - first].numpy(), atol=1e-5)


def test_sparse_edge_frames_stand_for_every_frame_once():
    """With sparse strides, the span's frames count once and each block beyond it is one middle frame
    counted as often as the block is long: together the 1,500 frames, each once."""
    settings = WindowSettings("edge", **EDGE_SPARSE)
    for kept in (0, 30, 805, 1499):
        frames, counts, position = _edge_frames(kept, settings)
        assert frames[position] == kept and np.all(np.diff(frames) > 0)
        assert counts.sum() == 1500
        first = min(max(kept - 75, 0), 1500 - 91)
        span = np.searchsorted(frames, first) + np.arange(91)
        np.testing.assert_array_equal(frames[span], np.arange(first, first + 91))
        assert np.all(counts[span] == 1)
        represented = np.concatenate([np.full(int(n), f) for f, n in zip(frames, counts)])
        assert np.abs(represented - np.arange(1500)).max() <= 128 // 2  # a frame is stood for by its block's middle
    frames, counts, _ = _edge_frames(805, settings)
    assert len(frames) == 91 + 46 + 6 and counts[0] == 730 - 45 * 16 and counts[-1] == 679 - 5 * 128


def test_sparse_edge_frames_equal_the_span_with_each_block_as_copies_of_its_middle_frame(one_thread):
    """Independent computation: each block of frames beyond the span replaced by copies of its middle
    frame (1,500 frames in all, layer 0 of the full padded forward), through the encoder's own layers."""
    encoder = load_encoder("tiny-whisper", "cpu", native_length=False)
    audio = _toy_audio(2.55)
    settings = WindowSettings("edge", context_s=1.0, span_before_s=0.2, span_after_s=0.1,
                              sparse_stride_before=8, sparse_stride_after=256)
    _, edge = extract_layer_features(encoder, audio, [0, 1, 2], settings, batch_size=4, progress=False)
    for k in (0, 4, 10, 24):
        end = (k + 1) * 1600
        window = torch.from_numpy(audio[None, max(0, end - settings.window_samples):end])
        kept = _authors_whisper_frame(encoder, window.shape[1])
        first = max(kept - 10, 0)
        sequence = list(range(first, first + 16))
        for start in range(first, 0, -8):
            sequence += [(max(start - 8, 0) + start) // 2] * (start - max(start - 8, 0))
        for start in range(first + 16, 1500, 256):
            sequence += [(start + min(start + 256, 1500)) // 2] * (min(start + 256, 1500) - start)
        sequence = sorted(sequence)
        assert len(sequence) == 1500
        with torch.no_grad():
            states = [encoder(window).hidden_states[0][:, sequence]]
            for layer in encoder.encoder.layers:
                states.append(layer(states[-1], None))
            states[-1] = encoder.encoder.layer_norm(states[-1])
        for layer in (0, 1, 2):
            np.testing.assert_allclose(edge[layer][k], states[layer][0, sequence.index(kept)].numpy(), atol=1e-4)


def test_shared_edge_frames_read_their_lead_window_outside_the_span(one_thread):
    """Independent computation: every layer run by the encoder itself over all 1,500 frames, with the span's
    states the window's own, every frame before it its group's lead window's (a whole forward pass) and every
    block of 8 frames after it copies of the lead's middle frame of the block.
    Full windows go in groups of ``shared_every`` led by their middle window; story-start windows in groups led
    by their first window that end before a span would start past the lead's kept frame less one. Leads keep the
    reference's frames."""
    encoder = load_encoder("tiny-whisper", "cpu", native_length=False)
    with torch.no_grad():  # sharper attention with larger values, so that frames depend on the context they read
        for layer in encoder.encoder.layers:
            for projection, scale in ((layer.self_attn.q_proj, 20.0), (layer.self_attn.k_proj, 20.0),
                                      (layer.self_attn.v_proj, 20.0)):
                projection.weight.mul_(scale)
    audio = _toy_audio(3.05)  # 30 grid points: windows 0-9 are shorter than 1.1 s, 10-29 full
    settings = WindowSettings("edge", context_s=1.0, span_before_s=0.3, span_after_s=0.1, sparse_stride_before=1,
                              sparse_stride_after=8, shared_every=4)
    leads = [0, 0, 0, 3, 3, 3, 6, 6, 6, 9] + [12 + (k - 10) // 4 * 4 for k in range(10, 30)]  # 12, 16, ..., 28
    # a start window's span begins 15 frames (0.3 s) before its kept frame, 5 frames per stride later than
    # the one before: windows 1 and 2 begin theirs at or before the lead's kept frame less one, window 3 not
    _, shared = extract_layer_features(encoder, audio, [0, 1, 2], settings, batch_size=2, progress=False)
    _, reference = extract_layer_features(encoder, audio, [0, 1, 2], WindowSettings(context_s=1.0), progress=False)
    for layer in (0, 1, 2):
        np.testing.assert_allclose(shared[layer][sorted(set(leads))], reference[layer][sorted(set(leads))], atol=1e-5)

    def window(k: int) -> torch.Tensor:
        return torch.from_numpy(audio[None, max((k + 1) * 1600 - settings.window_samples, 0):(k + 1) * 1600])

    for k in (1, 2, 4, 8, 11, 13, 27, 29):  # 11 and 27 read a lead 1 stride newer, 13 and 29 1 stride older
        with torch.no_grad():
            lead_states = encoder(window(leads[k])).hidden_states
            kept = _authors_whisper_frame(encoder, window(k).shape[1])
            span = slice(max(kept - 15, 0), max(kept - 15, 0) + 21)  # 0.3 s before, 0.1 s after
            states = [encoder(window(k)).hidden_states[0][:, span]]
            for lead_state, layer in zip(lead_states, encoder.encoder.layers):
                sequence = lead_state.clone()
                for block in range(span.stop, 1500, 8):
                    sequence[:, block:block + 8] = lead_state[:, (block + min(block + 8, 1500)) // 2, None]
                sequence[:, span] = states[-1]
                states.append(layer(sequence, None)[:, span])
            states[-1] = encoder.encoder.layer_norm(states[-1])
        for layer in (0, 1, 2):
            np.testing.assert_allclose(shared[layer][k], states[layer][0, kept - span.start].numpy(), atol=1e-5)
        assert np.abs(shared[2][k] - reference[2][k]).max() > 1e-4  # the lead's states are not the window's own


def test_edge_span_over_all_frames_is_the_reference(one_thread):
    encoder = load_encoder("tiny-whisper", "cpu", native_length=False)
    audio = _toy_audio(1.5)
    whole = WindowSettings("edge", context_s=1.0, span_before_s=29.98, span_after_s=0.0)
    times, reference = extract_layer_features(encoder, audio, [1, 2], WindowSettings(context_s=1.0), progress=False)
    edge_times, edge = extract_layer_features(encoder, audio, [1, 2], whole, progress=False)
    np.testing.assert_array_equal(times, edge_times)
    for layer in (1, 2):
        np.testing.assert_allclose(edge[layer], reference[layer], atol=1e-5)


@pytest.mark.parametrize("name, native, resolved", [
    ("tiny-whisper", False, WindowSettings("edge", context_s=1.0, **EDGE_SHARED)),
    ("tiny-whisper", True, WindowSettings("fast", context_s=1.0, stride_s=0.5)),
    ("tiny-wav2vec2", False, WindowSettings("fast", context_s=1.0, stride_s=0.5)),
])
def test_auto_mode_is_shared_edge_for_padded_whisper_and_fast_otherwise(name, native, resolved, noise_dataset,
                                                                       tmp_path, one_thread):
    encoder = load_encoder(name, "cpu", native_length=native)
    auto = WindowSettings("auto", context_s=1.0, stride_s=0.5)
    assert auto.for_encoder(encoder) == resolved and resolved.for_encoder(encoder) is resolved
    audio = _toy_audio(2.0)
    times, values = extract_layer_features(encoder, audio, [1], auto, progress=False)
    resolved_times, resolved_values = extract_layer_features(encoder, audio, [1], resolved, progress=False)
    np.testing.assert_array_equal(times, resolved_times)
    np.testing.assert_array_equal(values[1], resolved_values[1])
    _, cached = story_features(encoder, noise_dataset, "a", [1], auto, tmp_path, progress=False)
    (path,) = tmp_path.rglob("layer-01.npz")
    assert resolved.tag in path.parts  # cached under the mode it became, so that mode reads it without the model
    stub = _NoModel(encoder.fingerprint(), encoder.n_layers)
    _, hit = story_features(stub, noise_dataset, "a", [1], resolved, tmp_path, progress=False)
    np.testing.assert_array_equal(hit[1], cached[1])


def test_auto_mode_settings_and_errors():
    auto = WindowSettings("auto")
    assert (auto.stride_s, auto.frames_per_window) == (FAST_STRIDE_S, 20)
    assert auto.to_dict() == {"mode": "auto", "context_s": 16.0, "chunk_s": 0.1, "stride_s": 2.0}
    with pytest.raises(ValueError, match="span_before_s apply to mode='edge' only"):
        WindowSettings("auto", span_before_s=1.5)
    with pytest.raises(ValueError, match="mode='auto' depends on the encoder"):
        plan_windows(10 * SR, auto)
    assert WindowSettings.from_parameters("auto", 8.0, 1.0) == WindowSettings("auto", context_s=8.0, stride_s=1.0)
    assert WindowSettings.from_parameters("fast", 8.0, 1.0) == WindowSettings("fast", context_s=8.0, stride_s=1.0)
    assert WindowSettings.from_parameters("edge", 8.0, 1.0) == WindowSettings("edge", context_s=8.0)
    assert WindowSettings.from_parameters("reference") == WindowSettings()


@pytest.mark.parametrize("name, native", [("tiny-wav2vec2", False), ("tiny-whisper", True)])
def test_edge_mode_needs_padded_whisper(name, native):
    encoder = load_encoder(name, "cpu", native_length=native)
    with pytest.raises(ValueError, match="mode='edge' cuts the layers of Whisper padded to 30 s.*use mode='reference'"):
        extract_layer_features(encoder, _toy_audio(0.5), [1], WindowSettings("edge"), progress=False)


def test_layer_out_of_range_names_the_choices():
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    with pytest.raises(ValueError, match=r"layers \[3\] are not available: this model has 2 layers.*0 .* to 2"):
        extract_layer_features(encoder, _toy_audio(0.5), [1, 3], progress=False)
    with pytest.raises(ValueError, match=r"layers \[-1, 1.5\]"):
        check_layers([-1, 1.5, 2], 2)
    assert check_layers([2, np.int64(0), 2], 2) == (0, 2)
    assert default_layers(12) == PROTOCOL_LAYERS and default_layers(4) == (1, 2, 3, 4)


def test_whisper_windows_longer_than_30s_are_refused():
    encoder = load_encoder("tiny-whisper", "cpu")
    with pytest.raises(ValueError, match="exceed Whisper's 30 s input"):
        extract_layer_features(encoder, _toy_audio(0.5), [1], WindowSettings("fast", stride_s=16.0), progress=False)


def test_fast_mode_warns_once_for_whisper(caplog, monkeypatch, one_thread):
    monkeypatch.setattr(features, "_WARNED_FAST_WHISPER", set())
    encoder = load_encoder("tiny-whisper", "cpu")
    settings = WindowSettings("fast", context_s=1.0, stride_s=1.0)
    for _ in range(2):  # e.g. two stories
        extract_layer_features(encoder, _toy_audio(3.0), [1], settings, progress=False)
    assert caplog.text.count("fast windows give Whisper interior frames") == 1


# ----- cache -------------------------------------------------------------------------------------


class _NoModel:
    """Has the fingerprint and depth of a real encoder, and nothing else."""

    def __init__(self, fingerprint: str, n_layers: int):
        self._fingerprint, self.n_layers = fingerprint, n_layers

    def fingerprint(self) -> str:
        return self._fingerprint

    def __getattr__(self, name):
        raise AssertionError(f"the model was needed (encoder.{name})")


def test_cache_hit_skips_the_model(noise_dataset, tmp_path, one_thread):
    encoder = load_encoder("tiny-hubert", "cpu")
    settings = WindowSettings(context_s=0.5)
    times, features = story_features(encoder, noise_dataset, "a", [1, 2], settings, tmp_path, progress=False)
    assert times.shape == (10,) and features[2].shape == (10, encoder.hidden_size)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.npz"))
    assert [f.name for f in files] == ["layer-01.npz", "layer-02.npz"]
    assert files[0].parts[:4] == ("features", f"v{CACHE_VERSION}", encoder.fingerprint(), settings.tag)

    stub = _NoModel(encoder.fingerprint(), encoder.n_layers)
    hit_times, hit = story_features(stub, noise_dataset, "a", [2, 1], settings, tmp_path, progress=False)
    np.testing.assert_array_equal(hit_times, times)
    for layer in (1, 2):
        np.testing.assert_array_equal(hit[layer], features[layer])
    for other_key in ({"story": "b"}, {"layers": [0]}, {"settings": WindowSettings(context_s=1.0)}):
        call = {"story": "a", "layers": [1], "settings": settings} | other_key
        with pytest.raises(AssertionError, match="the model was needed"):
            story_features(stub, noise_dataset, cache_dir=tmp_path, progress=False, **call)


def test_corrupt_cache_file_is_recomputed(noise_dataset, tmp_path, one_thread, caplog):
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    settings = WindowSettings(context_s=0.5)
    _, features = story_features(encoder, noise_dataset, "b", [1], settings, tmp_path, progress=False)
    (path,) = tmp_path.rglob("layer-01.npz")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    _, again = story_features(encoder, noise_dataset, "b", [1], settings, tmp_path, progress=False)
    assert "is unreadable" in caplog.text and path.name in caplog.text
    np.testing.assert_allclose(again[1], features[1], atol=1e-6)
    stub = _NoModel(encoder.fingerprint(), encoder.n_layers)
    story_features(stub, noise_dataset, "b", [1], settings, tmp_path, progress=False)  # rewritten: a hit


# ----- TR features, delays, trims ----------------------------------------------------------------


def test_tr_features_is_lanczos_at_tr_midpoints():
    rng = np.random.default_rng(0)
    times, tr_times = np.arange(1, 401) / 10, np.arange(20) * 2.0 - 9.0
    values = rng.standard_normal((400, 3))
    expected = lanczos_resample(values, times, tr_times, window=3)
    np.testing.assert_allclose(tr_features(times, values, tr_times), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tr_features(times, {7: values}, tr_times)[7], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"n_times=400"):
        tr_features(times, values[:-1], tr_times)


def test_zscore_per_story_by_hand():
    values = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(zscore_per_story(values), [[-1.2247449, 0], [0, 0], [1.2247449, 0]], rtol=1e-6)


def test_make_delays_by_hand():
    values = np.array([[1, 10], [2, 20], [3, 30], [4, 40]], dtype=float)
    np.testing.assert_array_equal(make_delays(values, (1, 2)), [[0, 0, 0, 0],
                                                                [1, 10, 0, 0],
                                                                [2, 20, 1, 10],
                                                                [3, 30, 2, 20]])
    np.testing.assert_array_equal(make_delays(values[:, :1], (0, -1, 5)), [[1, 2, 0], [2, 3, 0], [3, 4, 0], [4, 0, 0]])
    assert make_delays(values).shape == (4, 8)
    with pytest.raises(ValueError, match="delays must be"):
        make_delays(values, (1.5,))


def test_trims_by_hand():
    assert stimulus_rows("s", 100, is_test=False) == slice(10, 95)
    assert stimulus_rows("s", 100, is_test=True) == slice(50, 95)
    assert response_rows_test == slice(40, None)
    stored_responses = np.arange(100)[10:-5]  # what the .hf5 files hold: TRs 10 .. 94
    np.testing.assert_array_equal(stored_responses[response_rows_test], np.arange(100)[stimulus_rows("s", 100, True)])
    with pytest.raises(ValueError, match=r"story 'short' has 55 TRs, too few for the \[50:-5\] trim"):
        stimulus_rows("short", 55, is_test=True)


# ----- design ------------------------------------------------------------------------------------

SPLIT = StorySplit(train=("a", "b"), validation=("c",), test="t")


def _features(dataset: Dataset, layer: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {story: {layer: rng.standard_normal((n, 2))} for story, n in dataset.n_trs.items()}


def test_layer_design_orders_zscore_delay_trim(noise_dataset):
    features = _features(noise_dataset)
    x_train, x_test, labels = layer_design(features, noise_dataset, SPLIT, layer=3, subject="S01")
    assert x_train.shape == (25 + 27 + 29, 8) and x_test.shape == (80 - 55, 8)
    assert list(dict.fromkeys(labels)) == ["a", "b", "c"] and (labels == "b").sum() == 27
    kept = features["a"][3][10:-5]  # statistics of the kept TRs, applied to the earlier ones too
    z = (features["a"][3] - kept.mean(axis=0)) / kept.std(axis=0)
    np.testing.assert_allclose(x_train[0], np.concatenate([z[9], z[8], z[7], z[6]]), rtol=1e-5)  # real earlier TRs
    np.testing.assert_allclose(x_train[labels == "a", :2], z[9:-6], rtol=1e-5, atol=1e-6)  # the 1-TR delay block
    test_kept = features["t"][3][50:-5]
    np.testing.assert_allclose(x_test[0, :2], (features["t"][3][49] - test_kept.mean(axis=0)) / test_kept.std(axis=0),
                               rtol=1e-5)
    x_train, _, labels = layer_design(features, noise_dataset, SPLIT, 3, delays=(1,), include_validation=False)
    assert x_train.shape == (52, 2) and set(labels) == {"a", "b"}


def test_layer_design_without_standardising_keeps_the_units(noise_dataset):
    """Residual features keep their scale: a near-silent column stays near-silent instead of being
    blown up to unit variance like the others."""
    features = _features(noise_dataset)
    for story in features:
        features[story][3] = features[story][3] * np.array([1.0, 1e-3])
    x_train, x_test, _ = layer_design(features, noise_dataset, SPLIT, 3, delays=(1, 2), standardise=False)
    np.testing.assert_allclose(x_train[:25], np.hstack([features["a"][3][9:-6], features["a"][3][8:-7]]))
    np.testing.assert_allclose(x_test, np.hstack([features["t"][3][49:-6], features["t"][3][48:-7]]))
    assert x_train[:, 1].std() < 0.01 * x_train[:, 0].std()
    z_train, _, _ = layer_design(features, noise_dataset, SPLIT, 3, delays=(1, 2))
    assert z_train[:, 1].std() == pytest.approx(z_train[:, 0].std(), rel=0.2)


def test_layer_design_names_missing_stories_and_layers(noise_dataset, tmp_path):
    features = _features(noise_dataset)
    del features["b"], features["t"]
    with pytest.raises(KeyError, match=r"no features for stories \['b', 't'\]"):
        layer_design(features, noise_dataset, SPLIT, layer=3)
    with pytest.raises(KeyError, match=r"layer 5 is missing .* \['a', 'b', 'c', 't'\] \(they have layers \[3\]\)"):
        layer_design(_features(noise_dataset), noise_dataset, SPLIT, layer=5)
    root = write_small_dataset(tmp_path / "data", {"a": 40, "b": 42, "c": 44, "t": 80})
    (root / "derivative" / "preprocessed_data" / "S01" / "c.hf5").unlink()
    with pytest.raises(DataError, match=r"S01 has no responses for stories \['c'\]"):
        layer_design(_features(noise_dataset), Dataset(root), SPLIT, layer=3, subject="S01")


def test_layer_design_names_mismatched_lengths(noise_dataset):
    features = _features(noise_dataset)
    features["b"][3] = features["b"][3][:-3]
    with pytest.raises(DataError, match=r"story 'b': the features have 39 TRs \(24 rows .*\) but its responses "
                                        r"pair with 27 rows \(the story has 42 TRs\)"):
        layer_design(features, noise_dataset, SPLIT, layer=3)


def test_dataset_tr_features_feed_the_design(noise_dataset, tmp_path, one_thread):
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    settings = WindowSettings(context_s=0.5)
    features = dataset_tr_features(encoder, noise_dataset, SPLIT.all, [2], settings, tmp_path, progress=False)
    assert {story: f[2].shape for story, f in features.items()} == {s: (n, 32) for s, n in noise_dataset.n_trs.items()}
    x_train, x_test, _ = layer_design(features, noise_dataset, SPLIT, layer=2, subject="S01")
    assert x_train.shape == (81, 128) and x_test.shape == (25, 128) and np.isfinite(x_train).all()
