"""The Python client of a labelwheel server: ``from service.client import Client``."""

from service.client.client import Client, Prediction
from service.client.datasets import PulledDataset
from service.client.http import ApiError

__all__ = ["ApiError", "Client", "Prediction", "PulledDataset"]
