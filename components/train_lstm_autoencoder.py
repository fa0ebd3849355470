from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_lstm_autoencoder(
    train: Input[Dataset],
    validation: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    window: int = 30,
    epochs: int = 5,
    seed: int = 42,
    device: str = "auto",
    alarm_quantile: float = 0.99,
):
    """Train the LSTM autoencoder on the training period's windows (GPU when present).

    The threshold comes from the validation reconstruction errors; no labels reach this step.
    The trained network also lands as TorchScript (``lstm_autoencoder.pt``) in the model folder.
    """
    from pathlib import Path

    from aiops.detectors.lstm_autoencoder import LstmConfig
    from aiops.training import step_metrics, train_from_folders

    config = LstmConfig(window=window, epochs=epochs, seed=seed, device=device)
    bundle = train_from_folders("lstm_autoencoder", config, train.path, validation.path, alarm_quantile)
    bundle.save(model.path)
    (Path(model.path) / "lstm_autoencoder.pt").write_bytes(bundle.detector.torchscript_bytes())
    model.metadata.update({"detector": "lstm_autoencoder", "device": bundle.detector.trained_on})
    for name, value in step_metrics(bundle).items():
        metrics.log_metric(name, value)
    for epoch, loss in enumerate(bundle.detector.history, start=1):
        metrics.log_metric(f"train_loss_epoch_{epoch:02d}", loss)
