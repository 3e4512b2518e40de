"""Labelled image folders and the decoded-image cache (``labelled``); the training augmentation as
batched tensor operations (``augment``)."""
