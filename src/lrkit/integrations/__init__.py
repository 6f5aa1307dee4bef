"""lrkit where users already train: ``lrkit.integrations.lightning`` (PyTorch Lightning
callbacks). Each module imports its framework, so import it only where that is installed
(``pip install 'lrkit[lightning]'``); Hugging Face's ``Trainer`` needs no module: it takes
an lrkit optimizer and ``lrkit.Scheduler`` as they are (see the documentation).
"""
