"""A time-major sequence model that uses the LSTM's full output sequence."""

import torch
from torch import nn


class FrameScorer(nn.Module):
    """(T, B, F) features -> per-frame scores in (0, 1) and the final hidden state."""

    def __init__(self, n_features: int = 24, hidden_size: int = 48, num_layers: int = 2,
                 n_outputs: int = 4):
        super().__init__()
        self.rnn = nn.LSTM(n_features, hidden_size, num_layers=num_layers, dropout=0.1)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(hidden_size, n_outputs)

    def forward(self, frames: torch.Tensor):
        out, (h_n, _) = self.rnn(frames)  # out: (T, B, H)
        scores = torch.sigmoid(self.head(self.dropout(out)))
        # the last frame's scores, scaled and shifted: arithmetic with scalars on both sides
        last = 2.0 * scores[-1] - 1.0
        return scores, last + h_n[-1, :, :4]
