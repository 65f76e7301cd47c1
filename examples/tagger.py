"""Recurrent taggers: a bidirectional time-major LSTM with initial states, and a padded-batch
GRU run through pack_padded_sequence / pad_packed_sequence."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiTagger(nn.Module):
    """(T, B, F) frames and initial (h0, c0) -> per-frame tag scores and the final states."""

    def __init__(self, n_features: int = 20, hidden_size: int = 32, n_tags: int = 6):
        super().__init__()
        self.encoder = nn.LSTM(n_features, hidden_size, num_layers=2, bidirectional=True)
        self.tags = nn.Linear(2 * hidden_size, n_tags)

    def forward(self, frames: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        out, (h_n, c_n) = self.encoder(frames, (h0, c0))
        return self.tags(out), h_n, c_n


class PaddedGru(nn.Module):
    """A batch of sequences of different lengths, padded: each is encoded over its own steps."""

    def __init__(self, n_features: int = 12, hidden_size: int = 24):
        super().__init__()
        self.gru = nn.GRU(n_features, hidden_size, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden_size, 4)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        encoded, h_n = self.gru(packed)
        padded, _ = pad_packed_sequence(encoded, batch_first=True)
        return torch.tanh(self.out(padded)), h_n[-1]
