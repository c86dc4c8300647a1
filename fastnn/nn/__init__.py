"""Layers with explicit forward and backward, torch's names and state-dict layout."""
from fastnn.nn.layers import (BatchNorm1d, Dropout, Identity, Linear, LogSoftmax, ReLU, Sigmoid,
                              Softmax, Tanh)
from fastnn.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from fastnn.nn.module import Module, Sequential
from fastnn.nn.parameter import FlatParameters, Parameter

__all__ = [
    "Module", "Sequential", "Parameter", "FlatParameters", "Linear", "ReLU", "Tanh", "Sigmoid",
    "Softmax", "LogSoftmax", "Identity", "Dropout", "BatchNorm1d", "CrossEntropyLoss", "MSELoss",
    "BCEWithLogitsLoss",
]
