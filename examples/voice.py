"""A speaker encoder in the style of the VoiceEncoder of chatterbox and Resemblyzer."""

import torch
from torch import nn


class VoiceEncoder(nn.Module):
    """Mel frames -> an L2-normalised speaker embedding."""

    def __init__(self, n_mels: int = 40, hidden_size: int = 256, embedding_size: int = 256,
                 num_layers: int = 3):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden_size, num_layers=num_layers, batch_first=True)
        self.proj = nn.Linear(hidden_size, embedding_size)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        # Data-dependent Python, as in real encoders: fx and torch.export cannot trace this.
        if mels.min() < 0 or mels.max() > 1:
            raise ValueError(f"mels must be in [0, 1], got [{mels.min()}, {mels.max()}]")
        _, (hidden, _) = self.lstm(mels)
        embeds = torch.relu(self.proj(hidden[-1]))
        return embeds / torch.linalg.norm(embeds, dim=1, keepdim=True)
