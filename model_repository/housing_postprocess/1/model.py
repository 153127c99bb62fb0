"""Housing pipeline postprocess (python backend): round predicted prices to whole dollars.

The last step of the ``housing_pipeline_*`` ensembles: a business rule that is not a model, kept next to the models so
the pipeline returns what the application shows. Batch-aware (rows of one request are rounded together).
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            price = pb_utils.get_input_tensor_by_name(request, "price").as_numpy()
            dollars = np.rint(price.astype(np.float64)).astype(np.int64)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("price_dollars", dollars)]))
        return responses
