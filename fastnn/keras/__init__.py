"""A Keras-style API on fastnn's kernels: the lecture's Keras code runs with only its imports changed.

    from fastnn.keras import Sequential, Dense, Activation, Dropout, BatchNormalization
    from fastnn.keras.utils import to_categorical
"""
from fastnn.keras import callbacks, optimizers, utils
from fastnn.keras.callbacks import EarlyStopping, History, ModelCheckpoint
from fastnn.keras.layers import Activation, BatchNormalization, Dense, Dropout, Flatten, Input, InputLayer
from fastnn.keras.models import Sequential, load_model

__all__ = ["Sequential", "Dense", "Activation", "Dropout", "BatchNormalization", "Flatten", "Input",
           "InputLayer", "load_model", "EarlyStopping", "ModelCheckpoint", "History", "callbacks",
           "optimizers", "utils"]
