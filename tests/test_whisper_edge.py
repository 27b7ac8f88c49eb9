"""The fast mode of Whisper padded to 30 s (bt_utils.features.whisper_edge), checked against Whisper's own layers."""

import numpy as np
import pytest
import torch
from conftest import authors_whisper_frame

from bt_utils.features import (
    WindowSettings,
    encoder_plan,
    extract_layer_features,
    kept_frame_index,
)
from bt_utils.features.whisper_edge import (
    AFTER_EVERY,
    GROUP_SIZE,
    SPAN_FRAMES,
    frame_states,
    member_rows,
    shared_groups,
    span_first,
)
from bt_utils.models.registry import load_encoder

SR = 16_000


@pytest.fixture
def padded():
    return load_encoder("tiny-whisper", device="cpu", native_length=False).eval()


def _toy_audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# ----- the pass: frames and context --------------------------------------------------------------


def test_frame_states_are_the_forward_at_those_frames(padded):
    """Over all 1,500 frames the frame states are the forward's; on a few frames, the layer-0 states
    (convolutions and positions) equal the forward's there, at the input's first and last frames too,
    while the layers see only those frames and so differ."""
    audio = torch.randn(3, 3 * SR, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([3 * SR, 20000, 700])
    chosen = torch.tensor([[0, 1, 2, 700, 1499], [3, 60, 61, 62, 900], [0, 37, 1200, 1498, 1499]])
    with torch.no_grad():
        full = padded(audio, lengths).hidden_states
        whole = frame_states(padded, audio, lengths, torch.arange(1500).repeat(3, 1))
        some = frame_states(padded, audio, lengths, chosen)
    for state, expected in zip(whole, full):
        torch.testing.assert_close(state, expected, atol=1e-5, rtol=0)
    for row in range(3):
        torch.testing.assert_close(some[0][row], full[0][row, chosen[row]], atol=1e-5, rtol=0)
    assert not torch.allclose(some[-1][1], full[-1][1, chosen[1]], atol=1e-3)


def test_frame_states_with_the_other_frames_as_context_are_the_forward(padded):
    """Frames whose attention also reads, as context, a forward pass's layer inputs at every other frame
    give that forward's states: per row, and with one context row shared by a batch of identical audio.
    With other context states they differ."""
    audio = torch.randn(2, 2 * SR, generator=torch.Generator().manual_seed(2)) * 0.1
    lengths = torch.tensor([2 * SR, 9000])
    span = torch.arange(40, 95)
    others = torch.ones(1, 1500)
    others[:, span] = 0
    with torch.no_grad():
        full = padded(audio, lengths).hidden_states
        context = list(full[:-1])
        spans = frame_states(padded, audio, lengths, span.repeat(2, 1), context, others)
        shared = frame_states(padded, audio[:1].repeat(3, 1), lengths[:1].repeat(3), span.repeat(3, 1),
                              [states[:1] for states in context], others.repeat(3, 1))
        other = frame_states(padded, audio, lengths, span.repeat(2, 1), [torch.randn_like(s) for s in context],
                             others)
    for state, expected in zip(spans, full):
        torch.testing.assert_close(state, expected[:, span], atol=1e-5, rtol=0)
    for state, expected in zip(shared, full):
        torch.testing.assert_close(state, expected[:1, span].expand(3, -1, -1), atol=1e-5, rtol=0)
    assert not torch.allclose(other[-1], full[-1][:, span], atol=1e-3)


def test_context_counts_weigh_context_frames_as_copies(padded):
    """A context frame counted twice, with the next frame left out, reads as two copies of it; a count of 0
    leaves a frame out, whatever the context holds there."""
    audio = torch.randn(2, 2 * SR, generator=torch.Generator().manual_seed(3)) * 0.1
    span = torch.arange(40, 95).repeat(2, 1)
    others = torch.ones(1, 1500)
    others[:, 40:95] = 0
    with torch.no_grad():
        context = list(padded(audio).hidden_states[:-1])
        copied = [states.clone() for states in context]
        for states in copied:
            states[:, 101] = states[:, 100]
        as_copies = frame_states(padded, audio, None, span, copied, others)
        doubled = others.clone()
        doubled[:, 100], doubled[:, 101] = 2.0, 0.0
        counted = frame_states(padded, audio, None, span, context, doubled)
        left_out = others.clone()
        left_out[:, 600:] = 0
        shorter = frame_states(padded, audio, None, span, context, left_out)
        scrambled = [states.clone() for states in context]
        for states in scrambled:
            states[:, 600:] = torch.randn_like(states[:, 600:])
        shorter_scrambled = frame_states(padded, audio, None, span, scrambled, left_out)
    for copy_states, counted_states in zip(as_copies, counted):
        torch.testing.assert_close(counted_states, copy_states, atol=1e-5, rtol=0)
    for state, scrambled_state in zip(shorter, shorter_scrambled):
        torch.testing.assert_close(state, scrambled_state, atol=1e-5, rtol=0)
    assert not torch.allclose(shorter[-1], counted[-1], atol=1e-4)


def test_frame_states_refuse_bad_input_and_other_encoders(padded):
    audio = torch.zeros(2, SR)
    context = [torch.zeros(1, 1500, 32)] * 2
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"within Whisper's 1500 frames \(0-1499\); got 0-1500"):
            frame_states(padded, audio, None, torch.tensor([[0, 1], [2, 1500]]))
        with pytest.raises(ValueError, match=r"shape \(B, N\) with B=2 rows of audio; got shape \(3,\)"):
            frame_states(padded, audio, None, torch.tensor([0, 1, 2]))
        with pytest.raises(ValueError, match=r"context must hold 2 tensors \(one per layer\)"):
            frame_states(padded, audio, None, torch.tensor([[0], [0]]), context[:1], torch.ones(1, 1500))
        with pytest.raises(ValueError, match=r"of shape \(B or 1, 1500, 32\)"):
            frame_states(padded, audio, None, torch.tensor([[0], [0]]), [c[:, 100:] for c in context],
                         torch.ones(1, 1500))
        with pytest.raises(ValueError, match="context needs context_counts"):
            frame_states(padded, audio, None, torch.tensor([[0], [0]]), context)
        with pytest.raises(ValueError, match=r"context_counts must have shape \(B or 1, 1500\)"):
            frame_states(padded, audio, None, torch.tensor([[0], [0]]), context, torch.ones(1, 100))
        with pytest.raises(ValueError, match="give context too"):
            frame_states(padded, audio, None, torch.tensor([[0], [0]]), context_counts=torch.ones(1, 1500))
    with pytest.raises(RuntimeError, match="call encoder.eval"):
        frame_states(padded.train(), audio, None, torch.tensor([[0], [0]]))
    for name, native in (("tiny-whisper", True), ("tiny-hubert", None)):
        other = load_encoder(name, device="cpu", native_length=native).eval()
        with pytest.raises(ValueError, match="needs Whisper padded to 30 s"):
            frame_states(other, audio, None, torch.tensor([[0], [0]]))


# ----- groups and spans --------------------------------------------------------------------------


def test_member_rows_stand_for_every_frame_once():
    """A member's span counts once and what it reads beyond it stands for every other frame once: every
    frame before the span, and each block of frames after it as its middle frame."""
    for kept in (0, 30, 805, 1499):
        spans, counts, positions = member_rows(np.array([kept]))
        first = min(max(kept - 75, 0), 1500 - SPAN_FRAMES)
        assert first == span_first(kept) and spans[0, positions[0]] == kept
        np.testing.assert_array_equal(spans[0].numpy(), np.arange(first, first + SPAN_FRAMES))
        counts = counts[0].numpy()
        assert counts.sum() + SPAN_FRAMES == 1500 and np.all(counts[first:first + SPAN_FRAMES] == 0)
        assert np.all(counts[:first] == 1)
        after = np.flatnonzero(counts[first + SPAN_FRAMES:]) + first + SPAN_FRAMES
        assert np.all(np.diff(after)[:-1] == AFTER_EVERY) and np.all(counts[after[:-1]] == AFTER_EVERY)  # last: shorter


def test_shared_groups_cover_every_window_once(padded):
    """Full-length windows in groups of GROUP_SIZE led by their middle window; story-start windows led by
    their first window, a group ending before a member's span would start past the lead's kept frame less one."""
    plan = encoder_plan(padded, int(12.05 * SR), WindowSettings("fast", context_s=4.0))
    kept = kept_frame_index(padded, plan)[plan.first]
    groups = shared_groups(plan, kept)
    windows = np.concatenate([[lead, *members] for lead, members in groups])
    np.testing.assert_array_equal(np.sort(windows), np.arange(len(plan.starts)))
    full = plan.ends - plan.starts == plan.window_samples
    start_groups = [(lead, members) for lead, members in groups if not full[lead]]
    assert [lead for lead, _ in start_groups] == [0, 15, 30]  # kept frame 5 (k + 1): a span starts at 5 (k + 1) - 75
    for lead, members in start_groups:
        assert all(span_first(kept[member]) <= kept[lead] - 1 for member in members)
        assert np.array_equal(members, np.arange(lead + 1, lead + 1 + len(members)))
    full_groups = [np.sort([lead, *members]) for lead, members in groups if full[lead]]
    assert [len(group) for group in full_groups] == [GROUP_SIZE] * 3 + [80 - 3 * GROUP_SIZE]  # 80 full windows
    for (lead, _), group in zip([g for g in groups if full[g[0]]], full_groups):
        assert lead == group[len(group) // 2]


# ----- features: against Whisper's own layers ----------------------------------------------------


def test_fast_frames_read_their_lead_window_beyond_the_span(padded):
    """Independent computation: every layer run by the encoder itself over all 1,500 frames, with the span's
    states the window's own, every frame before it its group's lead window's (a whole forward pass) and every
    block after it copies of the lead's middle frame of the block. Leads keep the reference's frames."""
    with torch.no_grad():  # sharper attention with larger values, so that frames depend on the context they read
        for layer in padded.encoder.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.weight.mul_(20.0)
    audio = _toy_audio(4.65)  # 46 grid points: windows 0-19 are shorter than 2.1 s, 20-45 full
    settings = WindowSettings("fast", context_s=2.0)
    leads = [0] * 15 + [15] * 5 + [31] * 23 + [44] * 3
    _, fast = extract_layer_features(padded, audio, [0, 1, 2], settings, batch_size=2, progress=False)
    _, reference = extract_layer_features(padded, audio, [0, 1, 2], WindowSettings(context_s=2.0), progress=False)
    for layer in (0, 1, 2):
        np.testing.assert_allclose(fast[layer][sorted(set(leads))], reference[layer][sorted(set(leads))], atol=1e-5)

    def window(k: int) -> torch.Tensor:
        return torch.from_numpy(audio[None, max((k + 1) * 1600 - 2 * SR - 1600, 0):(k + 1) * 1600])

    for k in (1, 14, 16, 19, 20, 25, 42, 43, 45):  # 20 reads a lead 11 strides newer, 42 one 11 strides older
        with torch.no_grad():
            lead_states = padded(window(leads[k])).hidden_states
            kept = authors_whisper_frame(padded, window(k).shape[1])
            span = slice(span_first(kept), span_first(kept) + SPAN_FRAMES)
            states = [padded(window(k)).hidden_states[0][:, span]]
            for lead_state, layer in zip(lead_states, padded.encoder.layers):
                sequence = lead_state.clone()
                for block in range(span.stop, 1500, AFTER_EVERY):
                    end = min(block + AFTER_EVERY, 1500)
                    sequence[:, block:end] = lead_state[:, (block + end) // 2, None]
                sequence[:, span] = states[-1]
                states.append(layer(sequence, None)[:, span])
            states[-1] = padded.encoder.layer_norm(states[-1])
        for layer in (0, 1, 2):
            np.testing.assert_allclose(fast[layer][k], states[layer][0, kept - span.start].numpy(), atol=1e-5)
        assert np.abs(fast[2][k] - reference[2][k]).max() > 1e-4  # the lead's states are not the window's own
