"""KafkaNeuroPredict: train deep time-series models on stock prices, serve them on a Kafka stream."""

from neuropredict.settings.environment import quiet_environment, secrets_from_files

# TensorFlow and MLflow read their log settings once, when first imported, and every entry point
# (stage scripts, CLI, notebooks, benchmarks) imports this package first: set the defaults here,
# and the secrets given as files (MLFLOW_TRACKING_PASSWORD_FILE).
quiet_environment()
secrets_from_files()

__version__ = "0.1.0"
