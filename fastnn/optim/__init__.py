"""Optimizers over fastnn Parameters with torch.optim's names, arguments, defaults and numbers.

Each step is one fused elementwise pass per parameter group whose parameters are one
FlatParameters buffer (see ``optimizer.py``), else one per parameter.
"""
from fastnn.optim.optimizer import Optimizer
from fastnn.optim.sgd import SGD
from fastnn.optim.adam import Adam, AdamW
from fastnn.optim.rmsprop import RMSprop
from fastnn.optim.adagrad import Adagrad

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]
