"""Train the image classifier: the same command as `toolkit train`.

    python train.py --data-csv label.txt --img-directory images
    python train.py --data_csv label.txt --img_directory images    # the original spelling, still accepted
"""

from image_toolkit.cli.train import train

if __name__ == "__main__":
    train(prog_name="train.py")
