"""Data in: image records from folders, zips and CSV lists, detection boxes (VOC, COCO), transforms, CIFAR-10."""
