"""A Tacotron-2-style text encoder and a token tagger."""

import torch
import torch.nn.functional as F
from torch import nn


class TacotronEncoder(nn.Module):
    """Character embeddings -> 3 x (Conv1d, BatchNorm1d, ReLU, dropout) -> bidirectional LSTM."""

    def __init__(self, n_symbols: int = 40, channels: int = 32, kernel_size: int = 5,
                 n_convolutions: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(n_symbols, channels)
        self.convolutions = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2),
                nn.BatchNorm1d(channels),
            )
            for _ in range(n_convolutions)
        )
        self.lstm = nn.LSTM(channels, channels // 2, batch_first=True, bidirectional=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens).transpose(1, 2)  # (B, C, T)
        for conv in self.convolutions:
            x = F.dropout(F.relu(conv(x)), 0.5, self.training)
        outputs, _ = self.lstm(x.transpose(1, 2))  # (B, T, C)
        return outputs


class TokenTagger(nn.Module):
    """Embedding -> LSTM -> Linear -> log_softmax over tags."""

    def __init__(self, vocab: int = 50, dim: int = 24, hidden: int = 32, n_tags: int = 7):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(tokens))
        return F.log_softmax(self.out(h), dim=-1)
