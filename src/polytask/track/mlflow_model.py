"""MLflow's entry point for a logged polytask model ("models from code"): MLflow runs this file
when it loads the model. See :mod:`polytask.track.pyfunc`."""

from mlflow.models import set_model

from polytask.track.pyfunc import PolytaskModel

set_model(PolytaskModel())
