"""MLflow models-from-code entry point: the registered pyfunc is a `ForecasterModel`.

MLflow stores this file with each logged model and runs it at load time (no pickled objects).
"""

import mlflow

from neuropredict.forecaster import ForecasterModel

mlflow.models.set_model(ForecasterModel())
