"""Predict labels of images with a trained model: the same command as `toolkit predict`.

    python inference.py image.jpg --model best_model.h5
    python inference.py image.jpg --model_weights best_model.h5    # the original spelling, still accepted
"""

from image_toolkit.cli.predict import predict

if __name__ == "__main__":
    predict(prog_name="inference.py")
