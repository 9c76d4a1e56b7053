"""KafkaNeuroPredict: train deep time-series models on stock prices, serve them on a Kafka stream."""

from neuropredict.settings.environment import quiet_environment

# TensorFlow and MLflow read their log settings once, when first imported, and every entry point
# (stage scripts, CLI, notebooks, benchmarks) imports this package first: set the defaults here.
quiet_environment()

__version__ = "0.1.0"
