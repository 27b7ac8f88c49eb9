"""Layer features: sliding windows, the feature cache, TR resampling, delays, trims and the design."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import authors_whisper_frame, cut_audio, write_small_dataset

from bt_utils.data.dataset import Dataset, StorySplit
from bt_utils.data.timing import trim_trs
from bt_utils.demo.simulation import DemoConfig, build_demo_dataset
from bt_utils.features import (
    PROTOCOL_LAYERS,
    WindowSettings,
    check_layers,
    dataset_tr_features,
    default_layers,
    encoder_plan,
    extract_layer_features,
    extraction,
    feature_tag,
    kept_frame_index,
    layer_design,
    make_delays,
    pads_to_30s,
    plan_windows,
    response_rows_test,
    stimulus_rows,
    story_features,
    tr_features,
    window_stride_s,
    zscore_per_story,
)
from bt_utils.features.extraction import CACHE_VERSION
from bt_utils.features.lanczos import lanczos_resample
from bt_utils.features.whisper_edge import TAG as SHARED_TAG
from bt_utils.features.windows import FAST_STRIDE_S
from bt_utils.models.registry import load_encoder
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
    reference, fast = WindowSettings(), WindowSettings("fast", context_s=16)
    assert (reference.mode, reference.context_samples, reference.chunk_samples) == ("reference", 256_000, 1600)
    assert fast.to_dict() == {"mode": "fast", "context_s": 16.0, "chunk_s": 0.1, "precision": "off"}
    assert WindowSettings("fast") == fast  # 16 and 16.0 are the same settings
    with pytest.raises(ValueError, match="mode='edge' is not valid"):
        WindowSettings("edge")
    with pytest.raises(ValueError, match="whole number of samples"):
        WindowSettings(chunk_s=1e-5)
    with pytest.raises(ValueError, match="context_s=-1.0 must be >= 0"):
        WindowSettings(context_s=-1.0)
    with pytest.raises(ValueError, match="precision='auto' is not valid"):
        WindowSettings(precision="auto")  # resolved for a device first (bt_utils.models.resolve_precision)
    with pytest.raises(TypeError):
        WindowSettings("fast", stride_s=2.0)  # the fast mode has no knobs


@pytest.mark.parametrize("stride_s", [None, 2.0, 3.0])
def test_plan_covers_the_grid_once_with_causal_windows(stride_s):
    settings = WindowSettings()
    n_samples = 61 * SR + 700  # a partial chunk at the end is not used
    plan = plan_windows(n_samples, settings, stride_s)
    stride = (stride_s or 0.1) * SR
    assert plan.window_samples == 16 * SR + stride
    np.testing.assert_allclose(plan.times, np.arange(1, 611) / 10)
    assert np.array_equal(np.concatenate([np.arange(a, b) for a, b in zip(plan.first, plan.stop)]), np.arange(610))
    assert plan.starts[0] == 0 and plan.ends[-1] == 610 * 1600
    assert np.all(plan.ends - plan.starts <= plan.window_samples)
    window = plan.window_of_frame
    heard = plan.grid_ends - plan.starts[window]  # past audio of each kept frame
    assert np.all((heard >= 16 * SR + 1600) | (plan.starts[window] == 0))
    assert np.all(plan.grid_ends <= plan.ends[window])


def test_plan_refuses_bad_strides_and_short_audio():
    with pytest.raises(ValueError, match="stride_s=0.25 must be a whole multiple of chunk_s=0.1"):
        plan_windows(10 * SR, WindowSettings(), 0.25)
    with pytest.raises(ValueError, match="stride_s=0.05 must be a whole multiple"):
        plan_windows(10 * SR, WindowSettings(), 0.05)
    with pytest.raises(ValueError, match="audio of 1000 samples is shorter than one chunk"):
        plan_windows(1000, WindowSettings())


@pytest.mark.parametrize("name, native, stride_s, tag", [
    ("tiny-wav2vec2", None, FAST_STRIDE_S, "fast-ctx16.0-chunk0.1-stride2.0"),
    ("tiny-hubert", None, FAST_STRIDE_S, "fast-ctx16.0-chunk0.1-stride2.0"),
    ("tiny-whisper", True, FAST_STRIDE_S, "fast-ctx16.0-chunk0.1-stride2.0"),
    ("tiny-whisper", False, 0.1, f"fast-ctx16.0-chunk0.1-{SHARED_TAG}"),
])
def test_fast_mode_per_family(name, native, stride_s, tag):
    """Strided windows for encoders that run at their input length; padded Whisper keeps one window per grid
    point (its work shared, see tests/test_whisper_edge.py). The reference is the same for every family."""
    encoder = load_encoder(name, "cpu", native_length=native)
    fast, reference = WindowSettings("fast"), WindowSettings()
    assert pads_to_30s(encoder) == (native is False)
    assert window_stride_s(encoder, fast) == stride_s and window_stride_s(encoder, reference) == 0.1
    assert feature_tag(encoder, fast) == tag
    assert feature_tag(encoder, reference) == "reference-ctx16.0-chunk0.1-stride0.1"
    plan = encoder_plan(encoder, 60 * SR, fast)
    assert len(plan.starts) == round(60 / stride_s) and plan.window_samples == round((16 + stride_s) * SR)


def test_fast_mode_cuts_encoder_compute_tenfold():
    plan_ref, plan_fast = plan_windows(600 * SR, WindowSettings()), plan_windows(600 * SR, WindowSettings(), 2.0)
    assert plan_ref.input_seconds() / plan_fast.input_seconds() > 17  # (16.1 / 0.1) * 2 / 18 = 17.9 in the steady state


# ----- extraction --------------------------------------------------------------------------------


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
        window = torch.from_numpy(audio[None, max(0, end - 17_600):end])  # 1 s of context + 0.1 s
        with torch.no_grad():
            output = encoder(window)
        last = int(output.frame_mask[0].sum()) - 1
        if encoder.family == "whisper" and not native:
            last = authors_whisper_frame(encoder, window.shape[1])
            assert last == int(output.frame_mask[0].sum())  # one frame after the fully real ones
        assert kept_frame_index(encoder, plan_windows(len(audio), settings))[k] == last
        for layer in (0, 2):
            np.testing.assert_allclose(features[layer][k], output.hidden_states[layer][0, last].numpy(), atol=1e-5)


def test_fast_frames_come_from_their_window(one_thread):
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    audio = _toy_audio(5.0)
    settings = WindowSettings("fast", context_s=1.0)
    times, features = extract_layer_features(encoder, audio, [1], settings, progress=False)
    assert len(times) == 50
    with torch.no_grad():  # window 1 spans 1.0-4.0 s (1 s of context + a 2-s stride), yields the frames at 2.1 .. 4.0 s
        output = encoder(torch.from_numpy(audio[None, 1 * SR:4 * SR]))
    for k in range(20, 40):
        index = int(encoder.frame_lengths(torch.tensor([(k + 1) * 1600 - 1 * SR]))[0]) - 1
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
    reference, fast = WindowSettings(context_s=4.0), WindowSettings("fast", context_s=4.0)
    compute = [encoder_plan(encoder, len(audio), settings).input_seconds() for settings in (reference, fast)]
    assert compute[0] / compute[1] > 10
    times, ref = extract_layer_features(encoder, audio, [0, 1, 2], reference, batch_size=16, progress=False)
    fast_times, approx = extract_layer_features(encoder, audio, [0, 1, 2], fast, batch_size=16, progress=False)
    np.testing.assert_array_equal(times, fast_times)
    ref_tr, fast_tr = tr_features(times, ref, tr_times), tr_features(times, approx, tr_times)
    for layer in ref:
        r = (zscore_per_story(trim_trs(ref_tr[layer])) * zscore_per_story(trim_trs(fast_tr[layer]))).mean(axis=0)
        print(f"{name} layer {layer}: TR-level r mean {r.mean():.3f}, min {r.min():.3f}")
        assert r.mean() > 0.9


def test_layer_out_of_range_names_the_choices():
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    with pytest.raises(ValueError, match=r"layers \[3\] are not available: this model has 2 layers.*0 .* to 2"):
        extract_layer_features(encoder, _toy_audio(0.5), [1, 3], progress=False)
    with pytest.raises(ValueError, match=r"layers \[-1, 1.5\]"):
        check_layers([-1, 1.5, 2], 2)
    assert check_layers([2, np.int64(0), 2], 2) == (0, 2)
    assert default_layers(12) == PROTOCOL_LAYERS and default_layers(4) == (1, 2, 3, 4)


@pytest.mark.parametrize("native, settings", [(False, WindowSettings(context_s=29.95)),
                                              (True, WindowSettings("fast", context_s=28.05))])
def test_whisper_windows_longer_than_30s_are_refused(native, settings):
    encoder = load_encoder("tiny-whisper", "cpu", native_length=native)
    with pytest.raises(ValueError, match=r"windows of 30\.05 s .* exceed Whisper's 30 s input; lower context_s"):
        extract_layer_features(encoder, _toy_audio(0.5), [1], settings, progress=False)


def test_fast_mode_warns_once_for_native_length_whisper(caplog, monkeypatch, one_thread):
    monkeypatch.setattr(extraction, "_WARNED_NATIVE_WHISPER", set())
    settings = WindowSettings("fast", context_s=1.0)
    for native in (False, True, True):  # padded Whisper keeps edge frames; two stories at native length
        encoder = load_encoder("tiny-whisper", "cpu", native_length=native)
        extract_layer_features(encoder, _toy_audio(3.0), [1], settings, progress=False)
    assert caplog.text.count("the fast mode of Whisper at native length keeps interior frames") == 1


# ----- cache -------------------------------------------------------------------------------------


class _NoModel:
    """Has the fingerprint, family, input length setting, depth and frozen layers of a real encoder, and nothing
    else."""

    def __init__(self, encoder):
        self._fingerprint, self.n_layers = encoder.fingerprint(), encoder.n_layers
        self.family, self.native_length = encoder.family, encoder.native_length
        self.frozen_layers = encoder.frozen_layers

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
    assert files[0].parts[:4] == ("features", f"v{CACHE_VERSION}", encoder.fingerprint(),
                                  "reference-ctx0.5-chunk0.1-stride0.1")

    stub = _NoModel(encoder)
    hit_times, hit = story_features(stub, noise_dataset, "a", [2, 1], settings, tmp_path, progress=False)
    np.testing.assert_array_equal(hit_times, times)
    for layer in (1, 2):
        np.testing.assert_array_equal(hit[layer], features[layer])
    for other_key in ({"story": "b"}, {"layers": [0]}, {"settings": WindowSettings(context_s=1.0)},
                      {"settings": WindowSettings("fast", context_s=0.5)}):
        call = {"story": "a", "layers": [1], "settings": settings} | other_key
        with pytest.raises(AssertionError, match="the model was needed"):
            story_features(stub, noise_dataset, cache_dir=tmp_path, progress=False, **call)


def test_a_story_being_computed_elsewhere_is_waited_for_then_read(noise_dataset, tmp_path, one_thread):
    """Parallel runs (a sweep's workers) needing the same story's features compute them once."""
    import shutil
    import threading

    from bt_utils.results import exclusive_lock

    encoder = load_encoder("tiny-hubert", "cpu")
    settings = WindowSettings(context_s=0.5)
    _, features = story_features(encoder, noise_dataset, "a", [1], settings, tmp_path / "done", progress=False)
    (done_file,) = (tmp_path / "done").rglob("layer-01.npz")
    shared_folder = tmp_path / "shared" / done_file.parent.relative_to(tmp_path / "done")
    results = {}
    with exclusive_lock(shared_folder / ".lock"):  # another run is computing the story
        waiter = threading.Thread(target=lambda: results.update(story_features(
            _NoModel(encoder), noise_dataset, "a", [1], settings, tmp_path / "shared", progress=False)[1]))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # waits for the lock instead of computing
        shutil.copy(done_file, shared_folder / done_file.name)  # the other run writes its result
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    np.testing.assert_array_equal(results[1], features[1])  # read back: the stub model was never needed


def test_dataset_features_do_a_story_being_computed_elsewhere_last(noise_dataset, tmp_path, one_thread):
    """Parallel runs split the stories they need instead of waiting for each other."""
    import threading
    import time

    from bt_utils.results import exclusive_lock

    encoder = load_encoder("tiny-hubert", "cpu")
    settings = WindowSettings(context_s=0.5)
    story_features(encoder, noise_dataset, "a", [1], settings, tmp_path / "probe", progress=False)
    (probe_file,) = (tmp_path / "probe").rglob("layer-01.npz")
    held_folder = tmp_path / "shared" / probe_file.parent.relative_to(tmp_path / "probe")
    results = {}
    with exclusive_lock(held_folder / ".lock"):  # another run is computing story "a"
        runner = threading.Thread(target=lambda: results.update(dataset_tr_features(
            encoder, noise_dataset, ["a", "b"], [1], settings, tmp_path / "shared", progress=False)))
        runner.start()
        deadline = time.monotonic() + 60
        while not list((tmp_path / "shared").rglob("b-*/layer-01.npz")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((tmp_path / "shared").rglob("b-*/layer-01.npz"))  # "b" done while "a" is held
        assert runner.is_alive() and not list((tmp_path / "shared").rglob("a-*/layer-01.npz"))
    runner.join(timeout=60)
    assert not runner.is_alive() and list(results) == ["a", "b"]
    expected = dataset_tr_features(encoder, noise_dataset, ["a", "b"], [1], settings, tmp_path / "alone",
                                   progress=False)
    for story in ("a", "b"):
        np.testing.assert_allclose(results[story][1], expected[story][1], atol=1e-6)


def test_corrupt_cache_file_is_recomputed(noise_dataset, tmp_path, one_thread, caplog):
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    settings = WindowSettings(context_s=0.5)
    _, features = story_features(encoder, noise_dataset, "b", [1], settings, tmp_path, progress=False)
    (path,) = tmp_path.rglob("layer-01.npz")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    _, again = story_features(encoder, noise_dataset, "b", [1], settings, tmp_path, progress=False)
    assert "is unreadable" in caplog.text and path.name in caplog.text
    np.testing.assert_allclose(again[1], features[1], atol=1e-6)
    stub = _NoModel(encoder)
    story_features(stub, noise_dataset, "b", [1], settings, tmp_path, progress=False)  # rewritten: a hit


@pytest.mark.parametrize("name, native, mode, described", [
    ("tiny-wav2vec2", None, "reference", {"stride_s": 0.1}),
    ("tiny-wav2vec2", None, "fast", {"stride_s": 2.0}),
    ("tiny-whisper", False, "fast", {"method": SHARED_TAG}),
])
def test_cache_keys_name_what_was_computed(name, native, mode, described, noise_dataset, tmp_path, one_thread):
    """The reference and the strided fast windows keep the keys of the earlier version-2 cache files (the same
    features), so those files are reused; padded Whisper's fast mode is keyed and filed by its own method, never
    under the strided windows' tag that its earlier fast mode used."""
    encoder = load_encoder(name, "cpu", native_length=native)
    settings = WindowSettings(mode, context_s=0.5)
    story_features(encoder, noise_dataset, "a", [1], settings, tmp_path, progress=False)
    (path,) = tmp_path.rglob("layer-01.npz")
    assert path.parent.parent.name == feature_tag(encoder, settings)
    with np.load(path) as stored:
        key = json.loads(str(stored["key"]))
    assert key["version"] == 2 and key["settings"] == {"mode": mode, "context_s": 0.5, "chunk_s": 0.1} | described


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bfloat16")
def test_bf16_features_agree_with_float32_and_are_cached_apart(speech, tmp_path, one_thread):
    """bfloat16 autocast changes features by its rounding only (measured on whisper-tiny.en: r > 0.9999 per
    feature), and its features are filed under a tag and key of their own, never read as float32 ones."""
    encoder = load_encoder("tiny-wav2vec2", "cpu")
    story = speech.stories[0]
    settings = {precision: WindowSettings("fast", context_s=4.0, precision=precision) for precision in ("off", "bf16")}
    computed = {precision: story_features(encoder, speech, story, [1, 2], window, tmp_path, progress=False)[1]
                for precision, window in settings.items()}
    for layer in (1, 2):
        single, half = computed["off"][layer], computed["bf16"][layer]
        assert half.dtype == np.float32 and half.shape == single.shape
        assert not np.array_equal(single, half)  # autocast did run
        r = [np.corrcoef(single[:, j], half[:, j])[0, 1] for j in range(single.shape[1])]
        assert np.median(r) > 0.995
    assert feature_tag(encoder, settings["bf16"]) == f"{feature_tag(encoder, settings['off'])}-bf16"
    keys = {}
    for path in tmp_path.rglob("layer-01.npz"):
        with np.load(path) as stored:
            keys[path.parent.parent.name] = json.loads(str(stored["key"]))["settings"]
    assert keys[feature_tag(encoder, settings["bf16"])]["precision"] == "bf16"
    assert "precision" not in keys[feature_tag(encoder, settings["off"])]


@pytest.mark.parametrize("name, native", [("tiny-wav2vec2", None), ("tiny-whisper", True)])
def test_brain_tuned_top_layers_continue_from_the_cached_states_of_the_frozen_ones(name, native, speech, tmp_path,
                                                                                   one_thread, monkeypatch):
    """Two models tuned above layer 1 of the same model: the first computes and caches the frozen layer's states,
    the second runs only its top layer from them (float16 states: features within rounding of a full pass)."""
    base = load_encoder(name, "cpu", native_length=native)
    tuned = []
    for seed in (0, 1):
        model = copy.deepcopy(base)
        with torch.no_grad():
            for parameter in model.layers[1].parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed)))
        model.frozen_layers = 1
        tuned.append(model)
    story, settings = speech.stories[0], WindowSettings("fast", context_s=4.0)
    audio = speech.load_audio(story)
    direct = [extract_layer_features(model, audio, [0, 1, 2], settings, progress=False)[1] for model in tuned]

    first = story_features(tuned[0], speech, story, [0, 1, 2], settings, tmp_path, progress=False)[1]
    (frozen_file,) = (tmp_path / "features").rglob("frozen/*/*/*.npz")
    for layer in (0, 1, 2):
        np.testing.assert_array_equal(first[layer], direct[0][layer])

    monkeypatch.setattr(tuned[1], "forward", lambda *args: pytest.fail("ran the frozen layers again"))
    second = story_features(tuned[1], speech, story, [0, 1, 2], settings, tmp_path, progress=False)[1]
    for layer in (0, 1):
        np.testing.assert_array_equal(second[layer], direct[0][layer])  # the frozen layers: shared
    np.testing.assert_allclose(second[2], direct[1][2], rtol=0, atol=5e-3 * np.abs(direct[1][2]).max())
    assert not np.allclose(second[2], first[2], atol=1e-3)  # the top layers differ
    assert frozen_file.parent.parent.name == f"{base.prefix_fingerprint(1)}-layer01"
    with pytest.raises(ValueError, match="no frozen layers to continue from"):
        extract_layer_features(base, audio, [1], settings, keep_frozen_states=True)


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
