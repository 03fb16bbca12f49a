print "Python 2 syntax"
