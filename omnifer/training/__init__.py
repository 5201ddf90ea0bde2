"""Training: the FER model's training loop (:mod:`~omnifer.training.train`, settings in
:mod:`~omnifer.training.config`), its evaluation (:mod:`~omnifer.training.evaluate`), and
retraining on labeled + mined data with promotion (:mod:`~omnifer.training.retrain`)."""
