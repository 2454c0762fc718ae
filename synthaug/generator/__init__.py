"""Conditional diffusion generators: train one on a real dataset (:mod:`~synthaug.generator.train`), then
load the trained run and draw images from it (:class:`~synthaug.generator.pipeline.Generator`).

    model.py, text.py, lora.py   the three backends (class/attribute U-Net, text U-Net, SD + LoRA)
    backends.py                  the interface they share, and which recipe builds which
    train.py, loss.py            the training loop and its loss
    sampling.py                  the denoising loop, with guidance and one seed per image
    pipeline.py                  Generator: a trained run, loaded, that samples images
"""

from synthaug.generator.pipeline import Condition, Generator

__all__ = ["Condition", "Generator"]
