"""Recurrent models stepped over time in Python, as their authors write them: a cell run frame
by frame with its state carried from pass to pass and the per-frame outputs stacked. PyCandle
ports each loop as a Rust `for` loop over the input's length."""

import torch
import torch.nn.functional as F
from torch import nn


class FrameVad(nn.Module):
    """A voice activity detector that steps an LSTM cell over the frames."""

    def __init__(self, n_features: int = 16, hidden_size: int = 24):
        super().__init__()
        self.hidden_size = hidden_size
        self.proj = nn.Linear(n_features, hidden_size)
        self.cell = nn.LSTMCell(hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, frames: torch.Tensor):  # (batch, time, features)
        batch = frames.size(0)
        h = frames.new_zeros(batch, self.hidden_size)
        c = frames.new_zeros(batch, self.hidden_size)
        x = torch.tanh(self.proj(frames))
        probs = []
        for t in range(frames.size(1)):
            h, c = self.cell(x[:, t], (h, c))
            probs.append(torch.sigmoid(self.head(h)))
        return torch.stack(probs, dim=1).squeeze(-1), h


class LayerNormLstmCell(nn.Module):
    """An LSTM cell with layer normalisation of its gates and of its cell."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.ih = nn.Linear(input_size, 4 * hidden_size, bias=False)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.ln_gates = nn.LayerNorm(4 * hidden_size)
        self.ln_cell = nn.LayerNorm(hidden_size)

    def forward(self, x, state):
        h, c = state
        gates = self.ln_gates(self.ih(x) + self.hh(h))
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.ln_cell(c))
        return h, (h, c)


class Predictor(nn.Module):
    """An RNN-T prediction network: embedded labels through a layer-normalised LSTM written as
    a Python loop over `unbind(0)`."""

    def __init__(self, vocab: int = 20, embed: int = 16, hidden_size: int = 24):
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(vocab, embed)
        self.cell = LayerNormLstmCell(embed, hidden_size)
        self.out = nn.Linear(hidden_size, vocab)

    def forward(self, tokens: torch.Tensor):  # (time, batch)
        x = self.embed(tokens)
        batch = tokens.size(1)
        state = (x.new_zeros(batch, self.hidden_size), x.new_zeros(batch, self.hidden_size))
        outputs = []
        for x_t in x.unbind(0):
            y, state = self.cell(x_t, state)
            outputs.append(y)
        return self.out(torch.stack(outputs)), state[1]


class LocationSensitiveAttention(nn.Module):
    """Tacotron-2's attention: content plus the location features of the previous and the
    cumulative alignment."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int = 16,
                 n_filters: int = 8, kernel_size: int = 7):
        super().__init__()
        self.query = nn.Linear(query_size, attention_size, bias=False)
        self.memory = nn.Linear(memory_size, attention_size, bias=False)
        self.location_conv = nn.Conv1d(2, n_filters, kernel_size,
                                       padding=(kernel_size - 1) // 2, bias=False)
        self.location_dense = nn.Linear(n_filters, attention_size, bias=False)
        self.v = nn.Linear(attention_size, 1)

    def forward(self, query, memory, processed_memory, weights, weights_cum):
        location = self.location_conv(torch.stack([weights, weights_cum], dim=1))
        location = self.location_dense(location.transpose(1, 2))
        energies = self.v(torch.tanh(self.query(query).unsqueeze(1) + processed_memory
                                     + location)).squeeze(-1)
        weights = F.softmax(energies, dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        return context, weights


class Tacotron2Decoder(nn.Module):
    """A Tacotron-2-style decoder under teacher forcing: a prenet, an attention LSTM cell,
    location-sensitive attention and a decoder LSTM cell, stepped over the target frames."""

    def __init__(self, n_mels: int = 8, memory_size: int = 12, prenet_size: int = 16,
                 rnn_size: int = 24):
        super().__init__()
        self.n_mels = n_mels
        self.rnn_size = rnn_size
        self.prenet = nn.Sequential(nn.Linear(n_mels, prenet_size), nn.ReLU(),
                                    nn.Linear(prenet_size, prenet_size), nn.ReLU())
        self.attention_rnn = nn.LSTMCell(prenet_size + memory_size, rnn_size)
        self.attention = LocationSensitiveAttention(rnn_size, memory_size)
        self.decoder_rnn = nn.LSTMCell(rnn_size + memory_size, rnn_size)
        self.projection = nn.Linear(rnn_size + memory_size, n_mels)
        self.gate = nn.Linear(rnn_size + memory_size, 1)

    def forward(self, memory: torch.Tensor, mels: torch.Tensor):
        # memory: (batch, text, memory_size); mels: (batch, frames, n_mels)
        batch, text = memory.size(0), memory.size(1)
        go = memory.new_zeros(batch, 1, self.n_mels)
        frames = self.prenet(torch.cat([go, mels[:, :-1]], dim=1))
        processed_memory = self.attention.memory(memory)
        att_h = memory.new_zeros(batch, self.rnn_size)
        att_c = memory.new_zeros(batch, self.rnn_size)
        dec_h = memory.new_zeros(batch, self.rnn_size)
        dec_c = memory.new_zeros(batch, self.rnn_size)
        weights = memory.new_zeros(batch, text)
        weights_cum = memory.new_zeros(batch, text)
        context = memory.new_zeros(batch, memory.size(2))
        outputs, gates, alignments = [], [], []
        for t in range(mels.size(1)):
            att_h, att_c = self.attention_rnn(torch.cat([frames[:, t], context], dim=-1),
                                              (att_h, att_c))
            context, weights = self.attention(att_h, memory, processed_memory, weights,
                                              weights_cum)
            weights_cum = weights_cum + weights
            dec_h, dec_c = self.decoder_rnn(torch.cat([att_h, context], dim=-1), (dec_h, dec_c))
            out = torch.cat([dec_h, context], dim=-1)
            outputs.append(self.projection(out))
            gates.append(self.gate(out))
            alignments.append(weights)
        mel_outputs = torch.stack(outputs, dim=1)
        gate_outputs = torch.stack(gates, dim=1).squeeze(-1)
        return mel_outputs, gate_outputs, torch.stack(alignments, dim=1)
