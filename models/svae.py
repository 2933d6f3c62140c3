"""SVAE: the sequential variational autoencoder (Sachdeva et al., WSDM 2019).

A user's positives in time order, i_1..i_T, go through an item embedding and a GRU.
At every step t the GRU state h_t gives a Gaussian posterior q(z_t | i_1..i_t) with
mean μ_t and log-variance log σ²_t (a tanh layer, then a linear map); a sample
z_t = μ_t + σ_t ⊙ ε is decoded by a tanh MLP into logits over all items, and the
multinomial likelihood asks the softmax π_t to put its mass on the NEXT k items
i_{t+1}..i_{t+k}. Per time step, the negative ELBO is

    -(1/k_t) Σ_{j=1..k_t} log π_t[i_{t+j}]  +  β · ½ Σ_d (μ²_td + σ²_td - 1 - log σ²_td)

with k_t = min(k, T - t) (steps with no item after them carry no loss); the loss is
the mean over all steps of the batch and β is annealed linearly to a cap.

Scoring runs the whole sequence (its most recent ``max_len`` items) and returns the
decoder logits of the LAST step, decoded from μ (no sampling), so a new user is folded
in from their rows alone. Order: by ``timestamps`` (a CSR with the rows' pattern) when
given, ties broken by item index; without them, each row's stored column order is taken
as the time order, which is only right if the caller wrote the columns in time order:
callers should pass timestamps. Item ids are shifted by one in the network so that 0 is
the padding token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Recommender, TrainData
from models.rows import DeviceRows, RowBatch, as_csr, as_row_batch, pad_recent

SCORE_CHUNK_ROWS = 256  # users per GRU pass when scoring: bounds the [rows, max_len, embed] activations
# Where the loss selects steps with targets (faster on a CPU; a GPU would wait for their count) (bench/RESULTS.md, "Figures moved out").
SELECTS_STEPS = ("cpu",)


@dataclass(frozen=True)
class SVAEConfig:
    # Chosen on ml-100k temporal validation over seeds 0-4 (bench/quality.py; bench/RESULTS.md, "Figures moved out").
    item_embed_size: int = 256  # paper / authors' code: item embedding of 256
    rnn_size: int = 200  # GRU state of 200
    hidden_size: int = 150  # one tanh layer of 150 in the encoder and in the decoder (authors' code)
    latent_size: int = 64  # z_t of 64 dimensions
    next_k: int = 4  # the authors' "next_k" loss with k = 4, also the best on validation
    max_len: int = 200  # keep the most recent 200 items per user (GRU steps are sequential: speed)
    # β weighs each step's KL against that step's likelihood, as in the paper's ELBO. The authors'
    # code averages the KL over steps but SUMS the likelihood over them: β/T per step, ~0.2/60 on
    # ml-100k. A cap of 0.2 per step over-regularises (bench/RESULTS.md, "Figures moved out").
    anneal_cap: float = 0.005
    total_anneal_steps: int = 2000  # batches to reach the cap (authors: 200k one-user steps, ~33 ML-1M epochs)
    epochs: int = 30
    batch_size: int = 32  # authors trained one user at a time; padded batches are the same loss, faster
    # Adam at 3e-3: as good as the authors' (effective) 1e-3 in about half the time (bench/RESULTS.md, "Figures moved out").
    lr: float = 3e-3
    weight_decay: float = 0.0  # authors: Adam's L2 of 5e-3 on ML-1M (1e-5 validated worse here)
    patience: int = 5
    # Dropout on the item embeddings fed to the GRU (authors: none) validates better (bench/RESULTS.md, "Figures moved out").
    dropout: float = 0.5


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space)
SEARCH_SPACE = {"anneal_cap": ("log", 1e-4, 0.05), "dropout": ("float", 0.0, 0.8)}


def next_k_targets(seqs: torch.Tensor, k: int) -> torch.Tensor:
    """[B, L, k]: targets[b, t] = seqs[b, t+1 .. t+k], 0 where the sequence has ended."""
    length = seqs.shape[1]
    windows = F.pad(seqs, (0, k)).unfold(1, k, 1)  # [B, L + 1, k], window w = positions w .. w+k-1
    return windows[:, 1 : length + 1]


class SVAE(Recommender):
    name = "svae"
    task = "ranking"
    reduced_precision = True
    Config = SVAEConfig
    search_space = SEARCH_SPACE
    can_fold_in = True
    sequential = True

    def __init__(self, config: SVAEConfig, n_items: int, n_users: int, rating_range: tuple[float, float] = (1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        c = config
        self.item_embed = nn.Embedding(self.n_items + 1, c.item_embed_size, padding_idx=0)
        self.gru = nn.GRU(c.item_embed_size, c.rnn_size, batch_first=True)
        self.encoder = nn.Linear(c.rnn_size, c.hidden_size)
        self.to_latent = nn.Linear(c.hidden_size, 2 * c.latent_size)  # [μ, log σ²]
        self.decoder_hidden = nn.Linear(c.latent_size, c.hidden_size)
        self.decoder_out = nn.Linear(c.hidden_size, self.n_items)
        for layer in (self.encoder, self.to_latent, self.decoder_hidden, self.decoder_out):
            nn.init.xavier_normal_(layer.weight)  # as the authors' code
            nn.init.zeros_(layer.bias)

    # ---- the network ------------------------------------------------------------------
    def _gru_states(self, seqs: torch.Tensor, train: bool = False) -> torch.Tensor:
        """GRU states [B, L, rnn] over right-padded sequences.

        The GRU is causal, so a state at a real step never sees the padding after it;
        states at padding steps are garbage and every caller masks them out. (Packing
        would skip them, but is slower than the padded kernel on CPU: bench/RESULTS.md, "Figures moved out".)
        """
        embedded = F.dropout(self.item_embed(seqs), self.config.dropout, training=train)
        # float32 under any autocast: bf16 quality was measured with a float32 GRU (a CPU's autocast
        # leaves it so; cuDNN's would not), and the decoder's n_items-wide layers are where bf16 pays
        with torch.autocast(seqs.device.type, enabled=False):
            states, _ = self.gru(embedded.float())
        return states

    def _posterior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(torch.tanh(self.encoder(h))).chunk(2, dim=-1)
        return mu, logvar

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_out(torch.tanh(self.decoder_hidden(z)))

    # ---- training ---------------------------------------------------------------------
    def training_batches(self, data: TrainData, generator: np.random.Generator) -> Iterator[torch.Tensor]:
        sequences = data.on_device(self.device, self.n_items, binary=True, in_time_order=True)  # each row in time order
        stored = sequences.row_lengths
        lengths = np.minimum(stored, self.config.max_len)
        users = np.flatnonzero(lengths >= 2)  # a single item has no next item to predict
        users = users[data.epoch_order(len(users), generator)]  # shuffled; this rank's share under DDP
        # Batches of users of similar length (random among equal lengths), in random order:
        # a padded batch costs its longest sequence, and histories range from 5 to max_len.
        users = users[np.argsort(lengths[users], kind="stable")]
        on_device = torch.from_numpy(users).to(self.device)  # one copy per epoch
        starts = np.arange(0, len(users), self.config.batch_size)
        for start in starts[generator.permutation(len(starts))].tolist():
            batch = slice(start, start + self.config.batch_size)
            rows = sequences.take(on_device[batch], nnz=int(stored[users[batch]].sum()))
            yield pad_recent(rows, self.config.max_len, width=int(lengths[users[batch]].max()))

    def annealing(self, step: int, epoch: int) -> dict[str, float]:
        c = self.config
        beta = c.anneal_cap if c.total_anneal_steps <= 0 else min(c.anneal_cap, step / c.total_anneal_steps)
        return {"anneal": float(beta)}

    def loss(self, batch: torch.Tensor, anneal: float = 0.0) -> torch.Tensor:
        seqs = batch.to(self.device)
        targets = next_k_targets(seqs, self.config.next_k)  # [B, L, k], item id + 1 or 0
        n_targets = (targets > 0).sum(-1)
        has_target = n_targets > 0  # padding and each sequence's last step carry no loss
        states = self._gru_states(seqs, train=self.training)  # [B, L, rnn]
        weight = has_target
        if seqs.device.type in SELECTS_STEPS:  # decode only the steps with targets: [N, ...]
            states, targets, n_targets, weight = states[has_target], targets[has_target], n_targets[has_target], None
        # float32 from here whatever the layers ran in (bfloat16 under autocast): a softmax over every item
        mu, logvar = (t.float() for t in self._posterior(states))
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_pi = F.log_softmax(self._decode(z).float(), dim=-1)  # [..., n_items]
        picked = log_pi.gather(-1, (targets - 1).clamp(min=0)) * (targets > 0)
        nll = -picked.sum(-1) / n_targets.clamp(min=1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        per_step = nll + anneal * kl
        return per_step.mean() if weight is None else (per_step * weight).sum() / weight.sum().clamp(min=1)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    # ---- scoring ----------------------------------------------------------------------
    @torch.no_grad()
    def scores(
        self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None
    ) -> torch.Tensor:
        """``rows``: a ``RowBatch`` already in time order, or a scipy CSR ordered by ``timestamps``."""
        if not isinstance(rows, RowBatch):
            rows = as_csr(rows, self.n_items)
            timestamps = self._check_timestamps(timestamps, rows)
        padded = pad_recent(as_row_batch(rows, self.n_items, self.device, binary=True, timestamps=timestamps), self.config.max_len)
        out = torch.empty(len(padded), self.n_items, device=self.device)
        for start in range(0, len(padded), SCORE_CHUNK_ROWS):
            stop = min(start + SCORE_CHUNK_ROWS, len(padded))
            seqs = padded[start:stop]
            last = ((seqs > 0).sum(1) - 1).clamp(min=0)  # an empty row reads its one padding step: the prior
            mu, _ = self._posterior(self._gru_states(seqs)[torch.arange(len(seqs), device=self.device), last])
            out[start:stop] = self._decode(mu)
        return out

    @torch.no_grad()
    def contributions(
        self,
        row: sp.csr_matrix,
        items: np.ndarray,
        *,
        history: np.ndarray | None = None,
        users: np.ndarray | None = None,
        timestamps: sp.csr_matrix | None = None,
    ) -> np.ndarray:
        """``Recommender.contributions`` (the drop in each item's score when one history item is removed),
        without re-reading each shortened sequence from its start.

        Removing the item at step p leaves the GRU states before p as they were, so the sequence's
        states are computed once and each removal restarts from the state before p and runs only the
        steps after it. With more than ``max_len`` items, removing one inside the window lets the item
        just before the window in, so those states are the last ``max_len + 1`` items'; removing an item
        older than the window leaves the window as it was: a drop of exactly 0. The same drops as scoring
        each shortened row (tests/models/test_svae.py); the cost grows with the square of the steps
        after the oldest item weighed, so weigh the most recent items.
        """
        row, items, history, _, timestamps = self._explain_inputs(row, items, history, timestamps)
        self._check_users(users, 1)
        drops = np.zeros((len(items), len(history)), dtype=np.float32)
        sequence = DeviceRows(row, "cpu", binary=True, timestamps=timestamps).indices.numpy()  # positives, time order
        longer = len(sequence) > self.config.max_len  # then removing a window item lets one more item in
        read = sequence[max(0, len(sequence) - self.config.max_len - 1) :]  # the window, and that item
        window = read[int(longer) :]
        by_item = np.argsort(window, kind="stable")
        at = np.searchsorted(window[by_item], history).clip(max=max(len(window) - 1, 0))
        found = window[by_item][at] == history if len(window) else np.zeros(len(history), dtype=bool)
        if len(items) == 0 or not found.any():  # none of the weighed items is read: removing them moves nothing
            return drops
        positions = by_item[at[found]] + int(longer)  # each weighed item's step in ``read``
        removed = np.unique(positions)
        seqs = torch.zeros(1 + int(longer), len(read), dtype=torch.int64)  # ``read`` and, when longer, the window
        seqs[0] = torch.from_numpy(read + 1)
        seqs[-1, : len(window)] = torch.from_numpy(window + 1)
        states = self._gru_states(seqs.to(self.device))  # one GRU call; the last row's last step is the whole row's
        last = torch.cat([states[-1:, len(window) - 1], self._removal_states(seqs[0].to(self.device), states[0], removed)])
        scores = self._decode(self._posterior(last)[0])[:, torch.from_numpy(items).to(self.device)]
        row_of = torch.from_numpy(1 + np.searchsorted(removed, positions)).to(self.device)
        drops[:, found] = (scores[0][None] - scores[row_of]).T.float().cpu().numpy()
        return drops

    def _removal_states(self, seq: torch.Tensor, states: torch.Tensor, removed: np.ndarray) -> torch.Tensor:
        """[len(removed), rnn]: the GRU's last state over ``seq`` (ids + 1, whose states are ``states``)
        without its step ``removed[r]``, for each r (``removed``: sorted, distinct). Each removal restarts
        from the state before it; at step t the rows whose suffix is longer than t run, a prefix of them as
        removals are sorted, their number known on the host (no sync per step)."""
        if len(seq) == 1:  # the one item removed: the empty row reads one padding step (``scores``)
            return self._gru_states(torch.zeros(1, 1, dtype=torch.int64, device=seq.device))[:, 0]
        gru = self.gru
        inputs = F.linear(self.item_embed(seq), gru.weight_ih_l0, gru.bias_ih_l0)  # [L, 3 rnn]: each step's input part
        removed_on_device = torch.from_numpy(removed).to(seq.device)
        h = torch.cat([torch.zeros_like(states[:1]), states])[removed_on_device]  # the state before each removal
        running = np.searchsorted(removed, len(seq) - 2 - np.arange(len(seq) - 1 - removed[0]), side="right")
        for t, n in enumerate(running.tolist()):
            x_r, x_z, x_n = inputs[removed_on_device[:n] + 1 + t].chunk(3, dim=1)
            h_r, h_z, h_n = F.linear(h[:n], gru.weight_hh_l0, gru.bias_hh_l0).chunk(3, dim=1)
            reset, update = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            candidate = torch.tanh(x_n + reset * h_n)
            h[:n] = candidate + update * (h[:n] - candidate)  # torch.nn.GRU's (1 - z) * n + z * h
        return h

    def item_embeddings(self) -> torch.Tensor:
        return self.decoder_out.weight.detach()  # [n_items, hidden]: the vector each item's logit reads
