"""PyCandle: port PyTorch models to Candle, with proof that the port is numerically right."""

__version__ = "0.1.0"
